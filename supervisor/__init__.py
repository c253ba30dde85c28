"""bawt-vllm supervisor: runs, watches and fully stops `vllm serve` processes."""

from __future__ import annotations

DIST_NAME = "bawt-vllm"


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed distribution only when asked for (importlib.metadata
    costs ~30 ms, which `bawt-vllm ps` does not pay)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DIST_NAME)
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
