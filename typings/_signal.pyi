# The C module under ``signal``, as ``cuprumd.ctl`` uses it: ``signal``
# itself imports ``enum``, which costs its quick commands a fifth of their
# start-up. Names not declared here are found with ``getattr``.
from collections.abc import Callable
from types import FrameType
from typing import Final

SIGHUP: Final[int]
SIGINT: Final[int]
SIGPIPE: Final[int]
SIGTERM: Final[int]

def signal(
    signalnum: int, handler: Callable[[int, FrameType | None], object] | int, /
) -> object: ...
