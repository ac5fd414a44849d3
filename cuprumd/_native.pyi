"""Native stream pump (Rust, built from crates/cuprum-native).

Descriptors are borrowed, never closed, and must stay open for the call.
Each call blocks with the GIL released. Errors: ``ValueError`` for a
negative descriptor or a ``buffer_size`` outside 1..=1 GiB; ``OSError``
carrying the real errno (``EBADF``, ...) for I/O failures, and ``EOPNOTSUPP``
for a descriptor the pump cannot serve (directory, eventfd, wrong access
mode), refused before any byte moves.
"""

def rust_pump_stream(
    reader_fd: int, writer_fd: int, *, buffer_size: int = 65536
) -> int:
    """Move bytes until EOF or until the consumer hangs up; return bytes written."""

def rust_pump_transfer(
    reader_fd: int, writer_fd: int, *, buffer_size: int = 65536
) -> tuple[int, str, bool]:
    """Like ``rust_pump_stream``; return ``(bytes, method, downstream_closed)``.

    ``method`` is ``"splice"`` or ``"copy"``. ``downstream_closed`` means the
    consumer closed its end first; the reader is left undrained so the
    producer gets SIGPIPE once the caller closes it.
    """

def rust_consume_stream(reader_fd: int, *, buffer_size: int = 65536) -> str:
    """Read to EOF and decode as UTF-8, invalid bytes replaced with U+FFFD."""

def is_available() -> bool:
    """Return True; importing this module is the real availability check."""
