"""A TCP proxy a test puts between a client and a real service, to make that service
misbehave the ways real networks and hung servers do, without touching the service
(which other tests share):

- ``hang()``: connections stay open, nothing is forwarded either way (a frozen server,
  a black-holed route: the client waits until its own time-out);
- ``refuse()``: new connections are refused and open ones are closed (a dead server);
- ``resume()``: forward again.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._mode = "forward"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stopped = threading.Event()
        self._refused = threading.Event()
        self._listener = self._listen(0)
        self.port = int(self._listener.getsockname()[1])
        self.connections = 0  # accepted so far: a test can tell its client came through here
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.05)
        return s

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ what a test calls
    def hang(self) -> None:
        with self._lock:
            self._mode = "hang"

    def refuse(self) -> None:
        """Returns once the listener is closed (by the proxy's own thread, so no accept
        is under way on it)."""
        self._refused.clear()
        with self._lock:
            self._mode = "refuse"
        if not self._refused.wait(5):
            raise RuntimeError("the proxy's thread did not stop listening")

    def resume(self) -> None:
        with self._lock:
            if self._mode == "refuse":
                self._listener = self._listen(self.port)
            self._mode = "forward"

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._listener.close()
            for a, b in self._pairs:
                a.close()
                b.close()

    # ------------------------------------------------------------------ the loop
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        while not self._stopped.is_set():
            with self._lock:
                mode, listener = self._mode, self._listener
            if mode == "refuse":
                if not self._refused.is_set():
                    with self._lock:
                        listener.close()
                        for a, b in self._pairs:
                            a.close()
                            b.close()
                        self._pairs.clear()
                    self._refused.set()
                self._stopped.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
                with self._lock:
                    self._pairs.append((client, upstream))
                    self.connections += 1
            except (TimeoutError, OSError):
                pass
            if mode == "hang":
                continue  # accepted connections stay open and silent
            with self._lock:
                pairs = list(self._pairs)
            for a, b in pairs:
                for src, dst in ((a, b), (b, a)):
                    try:
                        sel.register(src, selectors.EVENT_READ, dst)
                    except (KeyError, ValueError, OSError):
                        pass
            for key, _ in sel.select(timeout=0.05):
                readable, dst = key.fileobj, key.data
                assert isinstance(readable, socket.socket)
                src = readable
                try:
                    data = src.recv(65536)
                    if not data:
                        raise OSError("closed")
                    dst.sendall(data)
                except OSError:
                    self._drop(src)
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            for pair in list(self._pairs):
                if sock in pair:
                    pair[0].close()
                    pair[1].close()
                    self._pairs.remove(pair)


@contextmanager
def proxied(host: str, port: int) -> Iterator[TcpProxy]:
    p = TcpProxy(host, port)
    try:
        yield p
    finally:
        p.close()


def via_proxy(url: str, proxy: TcpProxy) -> str:
    """``url`` (http://host:port/… or postgresql://user@host:port/db) pointed at ``proxy``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}{proxy.address}"))


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url}: needs an explicit host and port"
    return parts.hostname, parts.port
