"""The TCP proxy the outage tests rely on does what they assume: forwards, hangs, refuses."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.proxy import TcpProxy, via_proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = TcpProxy("127.0.0.1", server.server_address[1])
    yield p
    p.close()
    server.shutdown()
    server.server_close()


def _echo(port: int, timeout: float = 2) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"ping")
        return s.recv(16)


def test_proxy_forwards_hangs_refuses_and_resumes(proxy: TcpProxy) -> None:
    assert _echo(proxy.port) == b"ping"
    proxy.hang()
    with pytest.raises(TimeoutError):
        _echo(proxy.port, timeout=0.5)  # connected, but nothing comes back
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        _echo(proxy.port)
    proxy.resume()
    assert _echo(proxy.port) == b"ping"
    assert proxy.connections >= 3


def test_via_proxy_keeps_user_and_path() -> None:
    p = TcpProxy("127.0.0.1", 9)
    try:
        assert (
            via_proxy("postgresql://postgres@127.0.0.1:5432/db?x=1", p) == f"postgresql://postgres@{p.address}/db?x=1"
        )
        assert via_proxy("http://127.0.0.1:8081/apis/ccompat/v7", p) == f"http://{p.address}/apis/ccompat/v7"
    finally:
        p.close()
