"""DOS services for .COM programs: INT 20h and the INT 21h functions such programs use.

Console: 01h read with echo, 02h write character, 06h direct I/O, 07h/08h
read without echo, 09h write a ``$``-terminated string, 0Ah buffered input,
0Bh input status, 0Ch flush and read. System: 0Eh/19h drives (one, C:),
25h/35h set/get interrupt vector, 2Ah/2Ch date and time, 30h version (5.0),
4Ch exit with a return code, 4Dh last return code. Files: 3Ch create, 3Dh
open, 3Eh close, 3Fh read, 40h write, 41h delete, 42h seek, 43h
attributes, 47h current directory.

Files live in one host directory the experiment names (``[v8086]
dos_root``); names are DOS names (``C:\\DATA\\IN.TXT``), matched without
regard to case, and a name that would leave the directory (``..``, an
absolute host path, a symlink out) is refused with "path not found". With no
``dos_root`` every file call fails with "access denied". Handles 0-4 are
stdin, stdout, stderr, aux and prn; stdout and stderr print through the BIOS
teletype. Errors follow DOS: CF=1 and AX = the DOS error code.

The program's return code ends the run: ``machine.request_exit(code)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from ..state import EAX, ProgramMemory
from . import ServiceCall

if TYPE_CHECKING:
    from smartvm_core.machine import Machine

    from .bios import Bios

# DOS error codes
E_INVALID_FUNCTION = 0x01
E_FILE_NOT_FOUND = 0x02
E_PATH_NOT_FOUND = 0x03
E_TOO_MANY_OPEN = 0x04
E_ACCESS_DENIED = 0x05
E_INVALID_HANDLE = 0x06
E_INVALID_ACCESS = 0x0C

MAX_HANDLES = 20
FIRST_FILE_HANDLE = 5
MAX_PATH = 128


class Dos:
    """DOS kernel state: open files, the last return code, the file root."""

    def __init__(self, memory: ProgramMemory, machine: "Machine | None", bios: "Bios", *,
                 root: Path | None = None, on_exit: Callable[[int], None] | None = None) -> None:
        self.memory = memory
        self.machine = machine
        self.bios = bios
        self.root = root.resolve() if root is not None else None
        self.files: dict[int, BinaryIO] = {}
        self.names: dict[int, str] = {}
        self.return_code = 0
        self.on_exit = on_exit
        self.exited: int | None = None

    def register(self, register: Callable[..., None]) -> None:
        register(0x20, self.int20_terminate)
        table = {0x00: self.terminate, 0x01: self.read_echo, 0x02: self.write_char, 0x06: self.direct_io,
                 0x07: self.read_raw, 0x08: self.read_raw, 0x09: self.write_string, 0x0A: self.buffered_input,
                 0x0B: self.input_status, 0x0C: self.flush_and_read, 0x0E: self.select_disk,
                 0x19: self.current_disk, 0x25: self.set_vector, 0x2A: self.get_date, 0x2C: self.get_time,
                 0x30: self.version, 0x35: self.get_vector, 0x3C: self.create, 0x3D: self.open,
                 0x3E: self.close, 0x3F: self.read, 0x40: self.write, 0x41: self.delete, 0x42: self.seek,
                 0x43: self.attributes, 0x47: self.current_directory, 0x4C: self.exit, 0x4D: self.get_return_code}
        for ah, fn in table.items():
            register(0x21, fn, ah=ah)
        register(0x21, self.unsupported)

    # -- helpers ----------------------------------------------------------------------------
    def out(self, data: bytes) -> None:
        for b in data:
            self.bios.teletype(b)

    def error(self, call: ServiceCall, code: int) -> None:
        call.state.ax = code
        call.set_carry(True)

    def unsupported(self, call: ServiceCall) -> None:
        call.state.al = 0  # DOS: AL=0 for functions it does not know

    def _finish(self, call: ServiceCall, code: int) -> None:
        self.return_code = code & 0xFF
        self.exited = code & 0xFF
        for f in self.files.values():
            f.close()
        self.files.clear()
        if self.on_exit is not None:
            self.on_exit(code & 0xFF)
        elif self.machine is not None:
            self.machine.request_exit(code & 0xFF)

    # -- termination ---------------------------------------------------------------------------
    def int20_terminate(self, call: ServiceCall) -> None:
        self._finish(call, 0)

    def terminate(self, call: ServiceCall) -> None:
        self._finish(call, 0)

    def exit(self, call: ServiceCall) -> None:
        self._finish(call, call.state.al)

    def get_return_code(self, call: ServiceCall) -> None:
        call.state.ax = self.return_code

    # -- console ---------------------------------------------------------------------------------
    def _key(self, call: ServiceCall) -> int | None:
        if not self.bios.keys:
            call.halt()
            return None
        return self.bios.keys.pop(0) & 0xFF

    def read_echo(self, call: ServiceCall) -> None:
        ch = self._key(call)
        if ch is not None:
            call.state.al = ch
            self.out(bytes((ch,)))

    def read_raw(self, call: ServiceCall) -> None:
        ch = self._key(call)
        if ch is not None:
            call.state.al = ch

    def write_char(self, call: ServiceCall) -> None:
        self.out(bytes((call.state.dl,)))
        call.state.al = call.state.dl

    def direct_io(self, call: ServiceCall) -> None:
        s = call.state
        if s.dl == 0xFF:
            if self.bios.keys:
                s.al = self.bios.keys.pop(0) & 0xFF
                call.set_zero(False)
            else:
                s.al = 0
                call.set_zero(True)
        else:
            self.out(bytes((s.dl,)))
            s.al = s.dl

    def write_string(self, call: ServiceCall) -> None:
        s = call.state
        self.out(self.memory.read_string(s.ds, s.dx, ord("$")))
        s.al = ord("$")

    def buffered_input(self, call: ServiceCall) -> None:
        s = call.state
        buf = (s.ds << 4) + s.dx
        size = self.memory.read(buf, 1)
        if size == 0:
            return
        keys = self.bios.keys
        if 0x0D not in (k & 0xFF for k in keys):
            call.halt()  # the line is not complete yet
            return
        line = bytearray()
        while keys:
            ch = keys.pop(0) & 0xFF
            if ch == 0x0D:
                break
            if ch == 0x08:
                if line:
                    line.pop()
                continue
            if len(line) < size - 1:
                line.append(ch)
        self.out(bytes(line) + b"\r")
        self.memory.write(buf + 1, 1, len(line))
        self.memory.write_bytes(buf + 2, bytes(line) + b"\r")

    def input_status(self, call: ServiceCall) -> None:
        call.state.al = 0xFF if self.bios.keys else 0

    def flush_and_read(self, call: ServiceCall) -> None:
        function = call.state.al
        self.bios.keys.clear()
        if function in (0x01, 0x06, 0x07, 0x08, 0x0A):
            call.state.ah = function
            {0x01: self.read_echo, 0x06: self.direct_io, 0x07: self.read_raw, 0x08: self.read_raw,
             0x0A: self.buffered_input}[function](call)

    # -- system -------------------------------------------------------------------------------------
    def select_disk(self, call: ServiceCall) -> None:
        call.state.al = 3  # drives A: to C:

    def current_disk(self, call: ServiceCall) -> None:
        call.state.al = 2  # C:

    def set_vector(self, call: ServiceCall) -> None:
        s = call.state
        self.memory.write(s.al * 4, 4, s.ds << 16 | s.dx)

    def get_vector(self, call: ServiceCall) -> None:
        s = call.state
        raw = self.memory.read(s.al * 4, 4)
        s.bx = raw & 0xFFFF
        s.set_seg("es", raw >> 16)

    def version(self, call: ServiceCall) -> None:
        s = call.state
        s.ax = 0x0005  # DOS 5.0: AL=major, AH=minor
        s.bx = 0
        s.cx = 0

    def get_date(self, call: ServiceCall) -> None:
        s = call.state
        lt = time.localtime()
        s.cx = lt.tm_year
        s.dh, s.dl = lt.tm_mon, lt.tm_mday
        s.al = (lt.tm_wday + 1) % 7

    def get_time(self, call: ServiceCall) -> None:
        s = call.state
        t = time.time()
        lt = time.localtime(t)
        s.ch, s.cl, s.dh, s.dl = lt.tm_hour, lt.tm_min, lt.tm_sec, int((t % 1) * 100)

    # -- files ----------------------------------------------------------------------------------------
    def resolve(self, name: bytes) -> Path | int:
        """The host path of DOS file ``name`` inside the root, or a DOS error code."""
        if self.root is None:
            return E_ACCESS_DENIED
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return E_PATH_NOT_FOUND
        if len(text) >= 2 and text[1] == ":":
            if text[0].upper() != "C":
                return E_PATH_NOT_FOUND
            text = text[2:]
        parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or any(p == ".." or "\0" in p for p in parts):
            return E_PATH_NOT_FOUND
        path = self.root
        for i, part in enumerate(parts):
            candidate = path / part
            if not candidate.exists() and path.is_dir():
                matches = [c for c in path.iterdir() if c.name.upper() == part.upper()]
                if matches:
                    candidate = matches[0]
            if i < len(parts) - 1 and not candidate.is_dir():
                return E_PATH_NOT_FOUND
            path = candidate
        try:
            real = path.resolve()
        except OSError:
            return E_PATH_NOT_FOUND
        if real != self.root and not real.is_relative_to(self.root):
            return E_PATH_NOT_FOUND
        return real

    def _name(self, call: ServiceCall) -> bytes:
        s = call.state
        return self.memory.read_string(s.ds, s.dx, 0, MAX_PATH)

    def _new_handle(self) -> int | None:
        for h in range(FIRST_FILE_HANDLE, MAX_HANDLES):
            if h not in self.files:
                return h
        return None

    def _open(self, call: ServiceCall, mode: str) -> None:
        path = self.resolve(self._name(call))
        if isinstance(path, int):
            return self.error(call, path)
        handle = self._new_handle()
        if handle is None:
            return self.error(call, E_TOO_MANY_OPEN)
        if mode != "w+b" and not path.is_file():
            return self.error(call, E_FILE_NOT_FOUND if path.parent.is_dir() else E_PATH_NOT_FOUND)
        try:
            f = open(path, mode)
        except IsADirectoryError:
            return self.error(call, E_ACCESS_DENIED)
        except FileNotFoundError:
            return self.error(call, E_PATH_NOT_FOUND)
        except OSError:
            return self.error(call, E_ACCESS_DENIED)
        self.files[handle] = f  # type: ignore[assignment]
        self.names[handle] = path.name
        call.state.ax = handle
        call.set_carry(False)

    def create(self, call: ServiceCall) -> None:
        self._open(call, "w+b")

    def open(self, call: ServiceCall) -> None:
        access = call.state.al & 7
        if access > 2:
            return self.error(call, E_INVALID_ACCESS)
        self._open(call, ("rb", "r+b", "r+b")[access])

    def close(self, call: ServiceCall) -> None:
        h = call.state.bx
        f = self.files.pop(h, None)
        if f is None:
            if h < FIRST_FILE_HANDLE:
                return call.set_carry(False)
            return self.error(call, E_INVALID_HANDLE)
        f.close()
        self.names.pop(h, None)
        call.set_carry(False)

    def read(self, call: ServiceCall) -> None:
        s = call.state
        h, count = s.bx, s.cx
        buf = (s.ds << 4) + s.dx
        if h == 0:  # stdin: one line from the key queue
            data = bytearray()
            keys = self.bios.keys
            while keys and len(data) < count:
                ch = keys.pop(0) & 0xFF
                data.append(ch)
                if ch == 0x0D:
                    if len(data) < count:
                        data.append(0x0A)
                    break
            self.memory.write_bytes(buf, bytes(data))
            s.ax = len(data)
            return call.set_carry(False)
        f = self.files.get(h)
        if f is None:
            return self.error(call, E_INVALID_HANDLE)
        try:
            data = f.read(count)
        except OSError:
            return self.error(call, E_ACCESS_DENIED)
        self.memory.write_bytes(buf, data)
        s.ax = len(data)
        call.set_carry(False)

    def write(self, call: ServiceCall) -> None:
        s = call.state
        h, count = s.bx, s.cx
        data = self.memory.read_bytes((s.ds << 4) + s.dx, count) if count else b""
        if h in (1, 2):
            self.out(data)
            s.ax = count
            return call.set_carry(False)
        f = self.files.get(h)
        if f is None:
            return self.error(call, E_INVALID_HANDLE if h not in (0, 3, 4) else E_ACCESS_DENIED)
        try:
            if count == 0:
                f.truncate()  # DOS: a zero-byte write truncates at the file pointer
            else:
                f.write(data)
        except OSError:
            return self.error(call, E_ACCESS_DENIED)
        s.ax = count
        call.set_carry(False)

    def delete(self, call: ServiceCall) -> None:
        path = self.resolve(self._name(call))
        if isinstance(path, int):
            return self.error(call, path)
        if not path.is_file():
            return self.error(call, E_FILE_NOT_FOUND)
        try:
            path.unlink()
        except OSError:
            return self.error(call, E_ACCESS_DENIED)
        call.set_carry(False)

    def seek(self, call: ServiceCall) -> None:
        s = call.state
        f = self.files.get(s.bx)
        if f is None:
            return self.error(call, E_INVALID_HANDLE)
        origin = s.al
        if origin > 2:
            return self.error(call, E_INVALID_FUNCTION)
        offset = s.cx << 16 | s.dx
        if offset & 0x80000000:
            offset -= 1 << 32
        try:
            pos = f.seek(offset, (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END)[origin])
        except (OSError, ValueError):
            return self.error(call, E_INVALID_FUNCTION)
        s.dx, s.ax = pos >> 16 & 0xFFFF, pos & 0xFFFF
        call.set_carry(False)

    def attributes(self, call: ServiceCall) -> None:
        path = self.resolve(self._name(call))
        if isinstance(path, int):
            return self.error(call, path)
        if not path.exists():
            return self.error(call, E_FILE_NOT_FOUND)
        if call.state.al == 0:
            call.state.cx = 0x10 if path.is_dir() else (0 if os.access(path, os.W_OK) else 1)
        call.set_carry(False)

    def current_directory(self, call: ServiceCall) -> None:
        s = call.state
        if s.dl not in (0, 3):
            return self.error(call, 0x0F)  # invalid drive
        self.memory.write(((s.ds << 4) + s.si), 1, 0)  # the root: an empty path
        s.gpr[EAX] = (s.gpr[EAX] & ~0xFFFF) | 0x0100
        call.set_carry(False)

    def close_all(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()

    def state(self) -> dict[str, Any]:
        return {"return_code": self.return_code,
                "files": {h: {"name": self.names.get(h, ""), "pos": f.tell()} for h, f in self.files.items()}}
