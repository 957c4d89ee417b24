"""Where a character device's bytes go, and where its input comes from.

A backend is chosen by a string (the ``backend`` device parameter):

=====================  ==========================================================
``stdio``              the machine console (terminal or the console file); input
                       from the terminal when standard input is a terminal
``file:PATH``          appended to ``PATH``; no input
``socket:HOST:PORT``   a listening TCP socket on a loopback address; one client
                       at a time; output while nobody is connected is dropped
``unix:PATH``          the same on a Unix socket
``pty``                a pseudo-terminal; its path is printed on standard error
                       and kept in ``backend.path``
``buffer``             memory only (``backend.data``), for tests
``null``               discarded
=====================  ==========================================================

Input from a reader thread is handed to the device through ``feed`` (the
UART's ``enqueue``), which is thread-safe.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

from smartvm_core.errors import SmartVMError

if TYPE_CHECKING:
    import socket

Feed = Callable[[bytes], Any]


class Backend:
    """Output sink plus an optional input source."""

    kind = "null"

    def __init__(self) -> None:
        self.feed: Feed | None = None
        self.dropped = 0

    def attach(self, feed: Feed) -> None:
        """Send host input to ``feed`` (the device's input queue)."""
        self.feed = feed

    def write(self, data: bytes) -> None:
        self.dropped += len(data)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.kind


class BufferBackend(Backend):
    """Keeps everything written in ``data``; tests feed input with :meth:`send`."""

    kind = "buffer"

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> None:
        if self.feed is not None:
            self.feed(data)


class ConsoleBackend(Backend):
    """The machine console; the terminal's input when stdin is a terminal."""

    kind = "stdio"

    def __init__(self, console: Any, terminal_input: bool = True) -> None:
        super().__init__()
        self.console = console
        self._thread: threading.Thread | None = None
        self._stop = False
        self._terminal_input = terminal_input

    def attach(self, feed: Feed) -> None:
        super().attach(feed)
        if self._terminal_input and self._thread is None and _stdin_is_terminal():
            self._thread = threading.Thread(target=self._read_stdin, name="uart-stdin", daemon=True)
            self._thread.start()

    def _read_stdin(self) -> None:
        fd = sys.stdin.fileno()
        while not self._stop:
            try:
                data = os.read(fd, 256)
            except OSError:
                return
            if not data:
                return
            if self.feed is not None:
                # a terminal sends LF for Enter; a serial line sends CR
                self.feed(data.replace(b"\n", b"\r"))

    def write(self, data: bytes) -> None:
        self.console.write(data)

    def close(self) -> None:
        self._stop = True


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


class FileBackend(Backend):
    kind = "file"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        try:
            self._f = open(path, "ab", buffering=0)
        except OSError as e:
            raise SmartVMError(f"backend: cannot open {path}: {e.strerror}") from None

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except (OSError, ValueError):
            self.dropped += len(data)

    def close(self) -> None:
        self._f.close()

    def describe(self) -> str:
        return f"file:{self.path}"


class _ReaderBackend(Backend):
    """Shared by the socket and pty backends: a daemon thread reads input."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = False
        self._lock = threading.Lock()

    def _pump(self, read: Callable[[], bytes]) -> bool:
        """Read until EOF; returns False when closed."""
        while not self._closed:
            try:
                data = read()
            except OSError:
                return not self._closed
            if not data:
                return not self._closed
            if self.feed is not None:
                self.feed(data)
        return False


class SocketBackend(_ReaderBackend):
    """A listening stream socket (TCP on loopback, or Unix); one client at a time."""

    def __init__(self, spec: str) -> None:
        import ipaddress  # here, not at the top: only socket backends need them (start-up time)
        import socket
        super().__init__()
        self.spec = spec
        self._client: socket.socket | None = None
        if spec.startswith("unix:"):
            self.kind = "unix"
            path = spec[5:]
            if not path:
                raise SmartVMError("backend: unix: needs a path (unix:/tmp/uart.sock)")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(path):
                    os.unlink(path)
                self._listener.bind(path)
            except OSError as e:
                self._listener.close()
                raise SmartVMError(f"backend: cannot listen on {path}: {e.strerror}") from None
            self.address: Any = path
        else:
            self.kind = "socket"
            host, _, port_s = spec[7:].rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            try:
                port = int(port_s, 0)
                if not 0 <= port < 65536:
                    raise ValueError
            except ValueError:
                raise SmartVMError(f"backend: {spec!r}: the port must be a number 0-65535 (socket:127.0.0.1:4555)") from None
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    raise SmartVMError(f"backend: {spec!r}: only loopback addresses are allowed "
                                       "(the guest's serial line would be open to the network)")
            except ValueError:
                if host != "localhost":
                    raise SmartVMError(f"backend: {spec!r}: {host!r} is not a loopback address") from None
                host = "127.0.0.1"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self._listener.bind((host, port))
            except OSError as e:
                self._listener.close()
                raise SmartVMError(f"backend: cannot listen on {host}:{port}: {e.strerror}") from None
            self.address = self._listener.getsockname()
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._accept_loop, name=f"uart-{self.kind}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # shut down by close()
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._client = conn
            try:
                self._pump(lambda: conn.recv(4096))
            finally:
                with self._lock:
                    self._client = None
                conn.close()

    def write(self, data: bytes) -> None:
        with self._lock:
            client = self._client
        if client is None:
            self.dropped += len(data)
            return
        try:
            client.sendall(data)
        except OSError:
            self.dropped += len(data)

    def close(self) -> None:
        """Stop listening, drop the client and wait for the reader thread; every descriptor is closed on return.

        A descriptor is never closed while the thread may still use it (its number
        could be reused by then): ``shutdown`` wakes the blocked ``accept`` or
        ``recv``, the thread closes the client it owns, then the listener closes.
        """
        import socket  # already loaded by __init__
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client = self._client
        for sock in (self._listener, client):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected (a listener on some systems, a client already gone)
        self._thread.join(timeout=5.0)
        if self._thread.is_alive() and client is not None:  # the thread is stuck: close it out from under it
            client.close()
        self._listener.close()
        if self.kind == "unix":
            try:
                os.unlink(self.address)
            except OSError:
                pass

    def describe(self) -> str:
        return f"{self.kind}:{self.address}"


class PtyBackend(_ReaderBackend):
    """A pseudo-terminal: ``screen``/``minicom`` on :attr:`path` talks to the guest."""

    kind = "pty"

    def __init__(self, announce: bool = True) -> None:
        super().__init__()
        import tty
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        if announce:
            print(f"smartvm: serial port on {self.path}", file=sys.stderr)
        self._thread = threading.Thread(target=self._pump, args=(lambda: os.read(self._master, 4096),),
                                        name="uart-pty", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self._closed:  # the descriptor's number may belong to another file by now
            self.dropped += len(data)
            return
        try:
            os.write(self._master, data)
        except OSError:
            self.dropped += len(data)

    def close(self) -> None:
        """Close both ends and wait for the reader thread; every descriptor is closed on return.

        Closing the slave ends the reader's ``read`` on the master (EIO) unless
        a terminal program still holds the slave; the master is closed after
        the thread has left its loop, so its number is never read after reuse.
        """
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self._slave)
        except OSError:
            pass
        self._thread.join(timeout=1.0)
        try:
            os.close(self._master)
        except OSError:
            pass

    def describe(self) -> str:
        return f"pty:{self.path}"


BACKEND_DOC = ("stdio (the machine console), file:PATH, socket:HOST:PORT or unix:PATH (listening, "
               "loopback only), pty, buffer (memory, for tests), null")


def make_backend(spec: str, console: Any) -> Backend:
    """Build the backend a ``backend`` parameter names; bad specs raise a clear error."""
    if spec == "stdio":
        return ConsoleBackend(console)
    if spec == "buffer":
        return BufferBackend()
    if spec == "null":
        return Backend()
    if spec == "pty":
        return PtyBackend()
    if spec.startswith("file:") and len(spec) > 5:
        return FileBackend(spec[5:])
    if spec.startswith(("socket:", "unix:")):
        return SocketBackend(spec)
    raise SmartVMError(f"backend: {spec!r} is not a backend; use one of: {BACKEND_DOC}")
