"""Running `vllm serve`: the command line, the process tree, readiness, one instance's state machine, the pool.

Imports only `config`. Nothing here knows about HTTP clients of ours, the CLI, the Hub or llm-bawt.
"""
