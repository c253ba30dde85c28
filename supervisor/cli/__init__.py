"""`bawt-vllm`: the command line, thin over the control client and the pool."""
