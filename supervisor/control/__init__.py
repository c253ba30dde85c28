"""The daemon's control socket: the protocol both ends share, the server over the pool, the client the CLI uses."""
