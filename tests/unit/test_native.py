"""The native extension as Python sees it: bytes, errors, errno, the GIL."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
import time
from typing import Any

import pytest


def feed(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def drain(fd: int, sink: list[bytes]) -> threading.Thread:
    def read() -> None:
        with os.fdopen(fd, "rb") as fh:
            sink.append(fh.read())

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_is_available(native: Any) -> None:
    assert native.is_available() is True


def test_pump_moves_64_mib_byte_exact(native: Any) -> None:
    payload = os.urandom(64 << 20)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    sink: list[bytes] = []
    writer, reader = feed(up_w, payload), drain(down_r, sink)
    try:
        moved = native.rust_pump_stream(up_r, down_w, buffer_size=1 << 20)
    finally:
        os.close(up_r)
        os.close(down_w)
    writer.join()
    reader.join()
    assert moved == len(payload)
    assert hashlib.sha256(sink[0]).digest() == hashlib.sha256(payload).digest()


def test_transfer_reports_method_and_downstream_close(native: Any) -> None:
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    os.close(down_r)  # nobody will ever read
    os.write(up_w, b"abc")
    try:
        moved, method, closed = native.rust_pump_transfer(up_r, down_w)
    finally:
        for fd in (up_r, up_w, down_w):
            os.close(fd)
    assert (moved, method, closed) == (0, "splice", True)


@pytest.mark.parametrize("size", [0, -1, (1 << 30) + 1])
def test_buffer_size_out_of_range_is_value_error(native: Any, size: int) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="buffer_size"):
            native.rust_pump_stream(r, w, buffer_size=size)
        with pytest.raises(ValueError, match="buffer_size"):
            native.rust_consume_stream(r, buffer_size=size)
    finally:
        os.close(r)
        os.close(w)


def test_closed_fd_is_oserror_with_ebadf(native: Any) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(OSError) as info:
            native.rust_pump_stream(r, w)
    finally:
        os.close(w)
    assert info.value.errno == errno.EBADF


def test_directory_is_unsupported_with_eopnotsupp(native: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as info:
                native.rust_pump_stream(fd, w)
        finally:
            for each in (fd, r, w):
                os.close(each)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "directory" in str(info.value)


def test_consume_decodes_with_replacement(native: Any) -> None:
    r, w = os.pipe()
    os.write(w, "żółw ".encode() + b"\xff" + "🦀".encode()[:3])
    os.close(w)
    try:
        text = native.rust_consume_stream(r, buffer_size=1)
    finally:
        os.close(r)
    assert text == "żółw \ufffd\ufffd"


def test_gil_is_released_while_pumping(native: Any) -> None:
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    pumper = threading.Thread(target=native.rust_pump_stream, args=(up_r, down_w))
    counter.start()
    pumper.start()
    time.sleep(0.3)
    progress = ticks
    time.sleep(0.3)
    assert ticks > progress  # the counter ran while the pump sat in splice
    os.close(up_w)  # EOF: the pump returns
    pumper.join(5)
    stop.set()
    counter.join()
    assert not pumper.is_alive()
    for fd in (up_r, down_r, down_w):
        os.close(fd)
