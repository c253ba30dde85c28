"""Running `vllm serve`: the command line, the process tree, readiness, one instance's state machine, the pool.

Imports only `config`. Nothing here knows about the daemon, the control socket, the CLI or llm-bawt;
of the Hugging Face Hub it knows only how to fetch the weights a start needs (`weights`, `hubclient`).
"""
