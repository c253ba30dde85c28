"""bawt-vllm supervisor: runs, watches and fully stops `vllm serve` processes."""
