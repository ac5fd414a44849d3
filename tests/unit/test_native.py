"""The native extension as Python sees it: bytes, errors, errno, the GIL."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from typing import Any

import pytest

from cuprumd import backend


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


def test_is_available_reports_that_splice_works_here(native: Any) -> None:
    # The pump tests below see "splice" between pipes, so the probe must too.
    assert native.is_available() is True
    assert native.is_available() is True  # cached, same answer


def test_module_without_splice_is_still_available(
    native: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The pump copies when splice refuses, so backend selection keeps its
    # seed meaning: the module imports, so the Rust pump is available.
    monkeypatch.setattr(native, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="cuprumd.backend"):
        assert backend.is_rust_available() is True
    assert "splice(2) does not work here" in caplog.text


def test_pump_moves_64_mib_byte_exact(native: Any) -> None:
    payload = os.urandom(64 << 20)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    sink: list[bytes] = []
    writer, reader = feed(up_w, payload), drain(down_r, sink)
    progress = native.TransferProgress()
    try:
        moved, method, closed = native.rust_pump_transfer(
            up_r, down_w, buffer_size=1 << 20, progress=progress
        )
    finally:
        os.close(up_r)
        os.close(down_w)
    writer.join()
    reader.join()
    assert (moved, method, closed) == (len(payload), "splice", False)
    assert (progress.bytes, progress.method) == (moved, method)
    assert hashlib.sha256(sink[0]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("pacing", [True, False])
def test_pacing_on_or_off_through_grown_pipes_is_byte_exact(
    native: Any, pacing: bool
) -> None:
    payload = os.urandom(8 << 20)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    for fd in (up_r, down_r):  # large enough for the pacer to engage
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    sink: list[bytes] = []
    writer, reader = feed(up_w, payload), drain(down_r, sink)
    try:
        moved, method, _ = native.rust_pump_transfer(
            up_r, down_w, buffer_size=1 << 20, pacing=pacing
        )
    finally:
        os.close(up_r)
        os.close(down_w)
    writer.join()
    reader.join()
    assert (moved, method) == (len(payload), "splice")
    assert sink[0] == payload


def test_progress_counts_while_the_transfer_blocks(native: Any) -> None:
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    progress = native.TransferProgress()
    assert (progress.bytes, progress.method) == (0, None)
    results: list[tuple[int, str, bool]] = []

    def run() -> None:
        results.append(native.rust_pump_transfer(up_r, down_w, progress=progress))

    pumper = threading.Thread(target=run)
    pumper.start()
    try:
        os.write(up_w, b"x" * 1000)
        deadline = time.monotonic() + 10
        while progress.bytes < 1000 and time.monotonic() < deadline:
            time.sleep(0.005)
        # Counted while the pump still blocks waiting for more input.
        assert (progress.bytes, progress.method) == (1000, "splice")
        assert pumper.is_alive()
        assert os.read(down_r, 4096) == b"x" * 1000
    finally:
        os.close(up_w)  # EOF: the pump returns
        pumper.join(10)
        for fd in (up_r, down_r, down_w):
            os.close(fd)
    assert not pumper.is_alive()
    assert results == [(1000, "splice", False)]
    assert progress.bytes == 1000
    assert repr(progress) == "TransferProgress(bytes=1000, method='splice')"


def test_progress_is_read_only(native: Any) -> None:
    progress = native.TransferProgress()
    with pytest.raises(AttributeError):
        progress.bytes = 5
    with pytest.raises(TypeError):
        native.rust_pump_transfer(0, 1, progress=object())


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


def test_transfer_without_splice_reports_copy(native: Any) -> None:
    src, up = socket.socketpair()
    down, dst = socket.socketpair()
    src.sendall(b"copied")
    src.close()
    progress = native.TransferProgress()
    try:
        result = native.rust_pump_transfer(
            up.fileno(), down.fileno(), progress=progress
        )
        down.close()
        assert dst.recv(64) == b"copied"
    finally:
        for sock in (up, down, dst):
            sock.close()
    assert result == (6, "copy", False)
    assert (progress.bytes, progress.method) == (6, "copy")


@pytest.mark.parametrize("size", [0, -1, (1 << 30) + 1])
def test_buffer_size_out_of_range_is_value_error(native: Any, size: int) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="buffer_size"):
            native.rust_pump_transfer(r, w, buffer_size=size)
    finally:
        os.close(r)
        os.close(w)


def test_closed_fd_is_oserror_with_ebadf(native: Any) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(OSError) as info:
            native.rust_pump_transfer(r, w)
    finally:
        os.close(w)
    assert info.value.errno == errno.EBADF


def test_directory_is_unsupported_with_eopnotsupp(native: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as info:
                native.rust_pump_transfer(fd, w)
        finally:
            for each in (fd, r, w):
                os.close(each)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "directory" in str(info.value)


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
    pumper = threading.Thread(target=native.rust_pump_transfer, args=(up_r, down_w))
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
