"""The long-running processes: the daemon (gateway, control socket, signals, systemd) and `up --foreground`."""
