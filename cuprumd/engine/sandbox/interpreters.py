"""Which files a program's ``execve`` opens: ELF ``PT_INTERP`` and ``#!``.

Landlock checks a program's dynamic loader, and a script's interpreter,
like the program itself, so allowlisting a program means allowing those
too. Finding them takes reading file headers the way the kernel does; that
parsing lives here, apart from any Landlock call, so it can be tested on
made-up files.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Final

from cuprumd.errors import ConfigError

__all__ = ["elf_interpreter", "shebang_interpreter"]

_ELF_MAGIC: Final = b"\x7fELF"
_PT_INTERP: Final = 3
_PN_XNUM: Final = 0xFFFF
#: The kernel reads this much of a file to find ``#!`` and its interpreter.
_BINPRM_BUF_SIZE: Final = 256
#: ``#!`` lines followed per program, and interpreters at most; see
#: ``_program_files``.
_SHEBANG_DEPTH: Final = 1
_INTERPRETER_CHAIN: Final = 4


@dataclass(frozen=True)
class _ElfClass:
    """Where the fields we need sit in a 32- or 64-bit ELF file."""

    header_size: int
    phoff: tuple[str, int]
    shoff: tuple[str, int]
    phentsize: int
    phnum: int
    ph_min: int
    ph_offset: tuple[str, int]
    ph_filesz: tuple[str, int]
    sh_min: int
    sh_info: int


_ELF32 = _ElfClass(52, ("I", 28), ("I", 32), 42, 44, 32, ("I", 4), ("I", 16), 40, 28)
_ELF64 = _ElfClass(64, ("Q", 32), ("Q", 40), 54, 56, 56, ("Q", 8), ("Q", 32), 64, 44)


def _field(image: bytes | mmap.mmap, order: str, code: str, offset: int) -> int:
    fmt = order + code
    if offset < 0 or offset + struct.calcsize(fmt) > len(image):
        msg = f"truncated ELF: field at {offset} lies beyond {len(image)} bytes"
        raise ValueError(msg)
    value: int = struct.unpack_from(fmt, image, offset)[0]
    return value


def elf_interpreter(image: bytes | mmap.mmap) -> str | None:
    """Return the ``PT_INTERP`` path an ELF file names, or None.

    The kernel opens that interpreter for the program, and Landlock checks
    it like the program itself, so it needs the same rights. None means a
    static binary or not an ELF file at all. ``image`` is the whole file
    (a ``mmap`` is fine); a header pointing outside it raises ``ValueError``,
    as the kernel would refuse to run such a file.
    """
    if image[:4] != _ELF_MAGIC:
        return None
    if len(image) < 16:
        msg = "truncated ELF identification"
        raise ValueError(msg)
    layout = {1: _ELF32, 2: _ELF64}.get(image[4])
    order = {1: "<", 2: ">"}.get(image[5])
    if layout is None or order is None:
        msg = f"unknown ELF class {image[4]} or byte order {image[5]}"
        raise ValueError(msg)
    phoff = _field(image, order, *layout.phoff)
    phentsize = _field(image, order, "H", layout.phentsize)
    phnum = _field(image, order, "H", layout.phnum)
    if phnum == _PN_XNUM:
        shoff = _field(image, order, *layout.shoff)
        phnum = _field(image, order, "I", shoff + layout.sh_info)
    if phnum and phentsize < layout.ph_min:
        msg = f"ELF program header entries of {phentsize} bytes are too small"
        raise ValueError(msg)
    for index in range(phnum):
        entry = phoff + index * phentsize
        if _field(image, order, "I", entry) != _PT_INTERP:
            continue
        start = _field(image, order, layout.ph_offset[0], entry + layout.ph_offset[1])
        size = _field(image, order, layout.ph_filesz[0], entry + layout.ph_filesz[1])
        if size == 0 or start + size > len(image):
            msg = f"ELF interpreter at {start}+{size} lies outside the file"
            raise ValueError(msg)
        name = bytes(image[start : start + size]).split(b"\0", 1)[0]
        if not name:
            msg = "ELF names an empty interpreter"
            raise ValueError(msg)
        return os.fsdecode(name)
    return None


def shebang_interpreter(head: bytes) -> str | None:
    """Return the interpreter a ``#!`` line names, as the kernel reads it.

    ``head`` is the file's first 256 bytes (fewer if the file is shorter).
    Like ``binfmt_script``: the name starts after blanks and ends at a
    blank, NUL or newline; a first line that fills the buffer without ending
    the name is refused (None), because the name may have been cut off.
    """
    buf = head[:_BINPRM_BUF_SIZE].ljust(_BINPRM_BUF_SIZE, b"\0")
    if not buf.startswith(b"#!"):
        return None
    newline = buf.find(b"\n")
    line = buf[2:] if newline < 0 else buf[2:newline]
    line = line.lstrip(b" \t")
    end = next((i for i, byte in enumerate(line) if byte in b" \t\0"), None)
    if end is None:
        if newline < 0:
            return None
        end = len(line)
    name = line[:end]
    return os.fsdecode(name) if name else None


def _interpreter_of(path: str) -> tuple[str | None, bool]:
    """The interpreter ``execve(path)`` would open, and whether via ``#!``.

    A file the kernel would refuse to run (a malformed ELF, a script without
    an interpreter) yields None: no extra rule makes it runnable.
    """
    with open(path, "rb") as fh:
        head = fh.read(_BINPRM_BUF_SIZE)
        if head.startswith(b"#!"):
            return shebang_interpreter(head), True
        if not head.startswith(_ELF_MAGIC):
            return None, False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as image:
            try:
                return elf_interpreter(image), False
            except ValueError:
                return None, False


def _program_files(executable: str) -> list[str]:
    """The program and every interpreter its ``execve`` opens (real paths).

    An ELF program brings its dynamic loader. A ``#!`` script brings its
    interpreter and, since that is usually an ELF binary, the interpreter's
    loader. Only one ``#!`` is followed: a script whose interpreter is
    itself a script is rare enough that allowlisting the inner interpreter
    explicitly is the clearer way to run it. A relative or missing
    interpreter is skipped: the program would fail without a sandbox too.
    """
    real = os.path.realpath(executable)
    files = [real]
    shebangs = 0
    while len(files) <= _INTERPRETER_CHAIN:
        try:
            interpreter, via_shebang = _interpreter_of(files[-1])
        except OSError as exc:
            if len(files) > 1:
                break
            msg = (
                f"programs: cannot read {executable} to find its interpreter: "
                f"{exc.strerror}"
            )
            raise ConfigError(msg) from None
        shebangs += via_shebang
        if interpreter is None or not os.path.isabs(interpreter):
            break
        if shebangs > _SHEBANG_DEPTH:
            break
        target = os.path.realpath(interpreter)
        if target in files or not os.path.isfile(target):
            break
        files.append(target)
    return files
