"""`python -m bawt_vllm.supervisor.cli` runs the command line (the daemon is started this way)."""

from .fastpath import main

main()
