"""`python -m bawt_vllm.supervisor.cli` runs the command line (the daemon is started this way)."""

from .app import main

main()
