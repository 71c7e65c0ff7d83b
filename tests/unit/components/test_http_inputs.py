"""http(s) inputs are bounded: private addresses refused unless allowed, every redirect
re-checked and counted, bytes and time capped. Against real servers on 127.0.0.1 (and
127.0.0.2, an "internal" one that must never be reached)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelpress.components import sources
from modelpress.components.sources import MAX_REDIRECTS, address_refusal, fetch_to
from modelpress.errors import InvalidInput

FIELD = "spec.model.uri"
BODY = bytes(range(256)) * 4  # 1024 bytes


@dataclass
class Server:
    host: str
    port: int
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def _redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
    handler.send_response(302)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _body(handler: BaseHTTPRequestHandler, data: bytes, announce: bool = True) -> None:
    handler.send_response(200)
    if announce:
        handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _drip(handler: BaseHTTPRequestHandler, pause_s: float, chunks: int) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(chunks):
        time.sleep(pause_s)
        handler.wfile.write(b"x" * 16)
        handler.wfile.flush()


def _route(handler: BaseHTTPRequestHandler, server: Server, internal: Server) -> None:
    path = handler.path
    routes: dict[str, Callable[[], None]] = {
        "/model.bin": lambda: _body(handler, BODY),
        "/big": lambda: _body(handler, b"x" * 5000),
        "/big-unannounced": lambda: _body(handler, b"x" * 5000, announce=False),
        "/loop-a": lambda: _redirect(handler, "/loop-b"),
        "/loop-b": lambda: _redirect(handler, "/loop-a"),
        "/to-internal": lambda: _redirect(handler, internal.url("/secret")),
        "/to-file": lambda: _redirect(handler, "file:///etc/passwd"),
        "/to-ftp": lambda: _redirect(handler, f"ftp://{server.host}/model.bin"),
        "/to-credentials": lambda: _redirect(handler, server.url("/model.bin").replace(
            "://", "://reader:hunter2@")),
        "/silent": lambda: _drip(handler, 2.0, 1),
        "/drip": lambda: _drip(handler, 0.2, 30),
    }
    if path.startswith("/hops/"):  # /hops/3 redirects three times, then serves BODY
        left = int(path.rsplit("/", 1)[1])
        _redirect(handler, f"/hops/{left - 1}") if left else _body(handler, BODY)
    elif path in routes:
        routes[path]()
    else:
        handler.send_error(404)


def _start(host: str, serve: Callable[[BaseHTTPRequestHandler], None],
           record: list[str]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            record.append(self.path)
            try:
                serve(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as the limits make it

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, httpd.server_address[1]


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """(the server a job names, an internal one on 127.0.0.2 that only redirects reach)."""
    internal = Server("127.0.0.2", 0)
    internal_httpd, internal.port = _start("127.0.0.2", lambda h: _body(h, b"secret"),
                                           internal.requests)
    server = Server("127.0.0.1", 0)
    httpd, server.port = _start("127.0.0.1", lambda h: _route(h, server, internal),
                                server.requests)
    yield server, internal
    for running in (httpd, internal_httpd):
        running.shutdown()
        running.server_close()


@pytest.fixture
def only_127_0_0_1_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 is a public address; every other address is judged as usual."""
    judged = sources.address_refusal
    monkeypatch.setattr(sources, "address_refusal",
                        lambda address: None if address == "127.0.0.1" else judged(address))


@pytest.fixture
def private_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_ALLOW_PRIVATE_HTTP", "true")


def _fetch(url: str, tmp_path: Path) -> Path:
    return fetch_to(url, tmp_path / "download.bin", FIELD)


def _refused(url: str, tmp_path: Path) -> str:
    with pytest.raises(InvalidInput) as refused:
        _fetch(url, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{FIELD}: {url}: ") and "\n" not in message, message
    assert not (tmp_path / "download.bin").exists(), "a refused download left a file"
    return message


# ------------------------------------------------------------------ private addresses


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_input_is_refused_by_default(servers: tuple[Server, Server], host: str,
                                                tmp_path: Path) -> None:
    server, _ = servers
    message = _refused(f"http://{host}:{server.port}/model.bin", tmp_path)
    assert "a loopback address" in message and "MODELPRESS_ALLOW_PRIVATE_HTTP" in message
    assert server.requests == [], "the refused address was connected to"


def test_the_setting_lets_inputs_reach_private_addresses(servers: tuple[Server, Server],
                                                         private_allowed: None,
                                                         tmp_path: Path) -> None:
    server, _ = servers
    assert _fetch(server.url("/model.bin"), tmp_path).read_bytes() == BODY


def test_a_redirect_to_a_private_address_is_refused(servers: tuple[Server, Server],
                                                    only_127_0_0_1_public: None,
                                                    tmp_path: Path) -> None:
    server, internal = servers
    assert _fetch(server.url("/model.bin"), tmp_path).read_bytes() == BODY  # the first hop
    message = _refused(server.url("/to-internal"), tmp_path)
    assert "127.0.0.2, a loopback address" in message
    assert internal.requests == [], "the redirect reached the internal server"


def test_only_the_checked_address_is_connected_to(servers: tuple[Server, Server],
                                                  only_127_0_0_1_public: None,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """A name resolving to a refused and an allowed address: the socket goes to the
    allowed one, never to an address that was not checked."""
    server, internal = servers
    resolve = socket.getaddrinfo

    def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != "models.example":
            return resolve(host, port, *args, **kwargs)
        return [*resolve("127.0.0.2", port, *args, **kwargs),
                *resolve("127.0.0.1", port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    downloaded = _fetch(f"http://models.example:{server.port}/model.bin", tmp_path)
    assert downloaded.read_bytes() == BODY
    assert internal.requests == []


# ----------------------------------------------------------------------- redirects


def test_redirects_are_followed_up_to_the_limit(servers: tuple[Server, Server],
                                                private_allowed: None, tmp_path: Path) -> None:
    server, _ = servers
    assert _fetch(server.url(f"/hops/{MAX_REDIRECTS}"), tmp_path).read_bytes() == BODY
    message = _refused(server.url(f"/hops/{MAX_REDIRECTS + 1}"), tmp_path)
    assert f"more than {MAX_REDIRECTS} redirects" in message
    assert f"/hops/{MAX_REDIRECTS + 1}" in server.requests
    assert "/hops/0" in server.requests  # from the first fetch only
    assert server.requests.count("/hops/0") == 1


def test_a_redirect_loop_is_refused(servers: tuple[Server, Server], private_allowed: None,
                                    tmp_path: Path) -> None:
    server, _ = servers
    message = _refused(server.url("/loop-a"), tmp_path)
    assert f"redirect loop: {server.url('/loop-a')} was visited before" in message
    assert server.requests == ["/loop-a", "/loop-b"]


@pytest.mark.parametrize(("path", "fragment"), [
    ("/to-file", "redirected to a file:// uri; only http(s) is followed"),
    ("/to-ftp", "redirected to a ftp:// uri; only http(s) is followed"),
    ("/to-credentials", "redirected to a uri with credentials in it"),
])
def test_a_redirect_elsewhere_than_plain_http_is_refused(servers: tuple[Server, Server],
                                                         private_allowed: None, tmp_path: Path,
                                                         path: str, fragment: str) -> None:
    server, _ = servers
    message = _refused(server.url(path), tmp_path)
    assert fragment in message and "hunter2" not in message
    assert server.requests == [path]


# ------------------------------------------------------------------- bytes and time


@pytest.mark.parametrize(("path", "fragment"), [
    ("/big", "5000 bytes announced, over MODELPRESS_HTTP_MAX_BYTES (1024)"),
    ("/big-unannounced", "more than MODELPRESS_HTTP_MAX_BYTES (1024 bytes)"),
])
def test_a_download_over_the_byte_cap_is_refused(servers: tuple[Server, Server],
                                                 private_allowed: None,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, path: str,
                                                 fragment: str) -> None:
    server, _ = servers
    monkeypatch.setenv("MODELPRESS_HTTP_MAX_BYTES", str(len(BODY)))
    assert _fetch(server.url("/model.bin"), tmp_path).read_bytes() == BODY  # at the cap
    assert fragment in _refused(server.url(path), tmp_path)


def test_a_silent_server_is_given_up_on(servers: tuple[Server, Server], private_allowed: None,
                                        monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    server, _ = servers
    monkeypatch.setenv("MODELPRESS_HTTP_READ_TIMEOUT_SECONDS", "0.5")
    started = time.monotonic()
    assert "MODELPRESS_HTTP_READ_TIMEOUT_SECONDS" in _refused(server.url("/silent"), tmp_path)
    assert time.monotonic() - started < 1.8


def test_a_slow_download_is_stopped_at_the_total_time(servers: tuple[Server, Server],
                                                      private_allowed: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """Each read comes in time (every 0.2 s), the whole would take 6 s: stopped near 1 s."""
    server, _ = servers
    monkeypatch.setenv("MODELPRESS_HTTP_TIMEOUT_SECONDS", "1")
    started = time.monotonic()
    message = _refused(server.url("/drip"), tmp_path)
    assert "took longer than MODELPRESS_HTTP_TIMEOUT_SECONDS" in message
    assert time.monotonic() - started < 3


def test_an_http_error_names_the_status(servers: tuple[Server, Server], private_allowed: None,
                                        tmp_path: Path) -> None:
    server, _ = servers
    assert "the server answered HTTP 404" in _refused(server.url("/missing"), tmp_path)


# ------------------------------------------------------------------ the classifier


@pytest.mark.parametrize(("address", "kind"), [
    ("8.8.8.8", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
    ("127.0.0.1", "loopback"),
    ("127.9.9.9", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("fe80::1%eth0", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible, deprecated
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("100.64.0.1", "non-public"),  # carrier-grade NAT
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("2002:a01:203::", "private"),  # 6to4 of 10.1.2.3
])
def test_address_classifier(address: str, kind: str | None) -> None:
    assert address_refusal(address) == kind
