"""cuprumd: a daemon that runs argv pipelines with its own stream pump.

The public names are loaded on first use (PEP 562), so that a quick
command (``cuprumctl run``, which imports ``cuprumd.ctl``) does not pay
for ``importlib.metadata`` and the backend module at every start.
"""

from __future__ import annotations

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cuprumd.backend import StreamBackend, is_rust_available

    __version__: str

__all__ = ["StreamBackend", "__version__", "is_rust_available"]


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value: object = version("cuprumd")
        except PackageNotFoundError:  # a source tree that was never built
            value = "0.0.0+unknown"
    elif name in ("StreamBackend", "is_rust_available"):
        from cuprumd import backend  # noqa: PLC0415

        value = getattr(backend, name)
    else:
        msg = f"module 'cuprumd' has no attribute {name!r}"
        raise AttributeError(msg)
    globals()[name] = value
    return value
