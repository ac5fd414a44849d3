"""cuprumd: a daemon that runs argv pipelines with its own stream pump."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cuprumd.backend import StreamBackend, is_rust_available

try:
    __version__ = version("cuprumd")
except PackageNotFoundError:  # running from a source tree that was never built
    __version__ = "0.0.0+unknown"

__all__ = ["StreamBackend", "__version__", "is_rust_available"]
