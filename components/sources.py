"""Bring a model or data uri to a local file (file://, s3://, http(s)://), or a model folder
to a local folder (file://, s3://)."""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlparse

from modelpress.errors import InvalidInput, StoreError
from modelpress.settings import get_settings, within_allowed_roots
from modelpress.store import file_uri_path


def local_file(uri: str) -> Path:
    """The path a file:// uri names; it must exist and lie under an allowed root, if any."""
    path = file_uri_path(uri).resolve()
    if not within_allowed_roots(path):
        raise FileNotFoundError(f"{uri} lies outside the allowed roots")
    if not path.is_file():
        raise FileNotFoundError(f"{uri} does not exist")
    return path


def fetch_to(uri: str, destination: Path, where: str) -> Path:
    """Copy what `uri` names to `destination`; errors name `where` (a spec field) and the uri."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    scheme = urlparse(uri).scheme
    try:
        if scheme == "file":
            shutil.copyfile(local_file(uri), destination)
        elif scheme == "s3":
            _fetch_s3(uri, destination)
        elif scheme in ("http", "https"):
            _fetch_http(uri, destination, where)
        else:
            raise InvalidInput(where, f"{uri}: scheme {scheme}:// cannot be fetched here")
    except (FileNotFoundError, StoreError, urllib.error.URLError, OSError) as error:
        raise InvalidInput(where, str(error)) from None
    return destination


def readable_path(uri: str, scratch: Path, where: str) -> Path:
    """A local file holding what `uri` names: a file:// uri's own file, read in place (no
    copy), or a download into `scratch`."""
    if urlparse(uri).scheme == "file":
        try:
            return local_file(uri)
        except (FileNotFoundError, StoreError) as error:
            raise InvalidInput(where, str(error)) from None
    return fetch_to(uri, scratch / f"download{file_suffix(uri)}", where)


# A folder under an s3:// prefix: at most this many objects and bytes. A model folder has a
# handful of files; a data folder (images, `datasets` shards) may have many.
MAX_MODEL_FOLDER_OBJECTS = 256
MAX_DATA_FOLDER_OBJECTS = 200_000
MAX_FOLDER_BYTES = 8 * 1024**3


def readable_folder(uri: str, scratch: Path, where: str,
                    max_objects: int = MAX_MODEL_FOLDER_OBJECTS) -> Path:
    """A local folder holding what the folder `uri` names: a file:// folder read in place
    (under the allowed roots, no symlink leading out of it), or every object under an
    s3:// prefix downloaded into `scratch` (`max_objects` and MAX_FOLDER_BYTES at most;
    keys that are no plain path inside the prefix are refused)."""
    scheme = urlparse(uri).scheme
    try:
        if scheme == "file":
            return _local_folder(uri)
        if scheme == "s3":
            return _download_prefix(uri, scratch / "folder", where, max_objects)
    except (FileNotFoundError, StoreError) as error:
        raise InvalidInput(where, str(error)) from None
    raise InvalidInput(where, f"{uri}: a folder is read from file:// or s3://, not {scheme}://")


def _local_folder(uri: str) -> Path:
    folder = file_uri_path(uri).resolve()
    if not within_allowed_roots(folder):
        raise FileNotFoundError(f"{uri} lies outside the allowed roots")
    if not folder.is_dir():
        raise FileNotFoundError(f"{uri} is not a folder")
    for path in folder.rglob("*"):
        if path.is_symlink() and folder not in path.resolve().parents:
            raise FileNotFoundError(f"{uri}: {path.relative_to(folder)} is a symlink leading "
                                    "out of the folder")
    return folder


def folder_member(key: str, prefix: str, uri: str, where: str) -> PurePosixPath:
    """The path of object `key` inside the folder `prefix` names: plain parts only (no
    `..`, `.`, empty parts, backslashes or control characters)."""
    relative = key.removeprefix(prefix)
    parts = relative.split("/")
    odd = (not key.startswith(prefix) or "\\" in relative
           or any(part in ("", ".", "..") for part in parts)
           or any(ord(char) < 32 for char in relative))
    if odd:
        raise InvalidInput(where, f"{uri}: object {key!r} is not a plain path inside the folder")
    return PurePosixPath(*parts)


def _download_prefix(uri: str, destination: Path, where: str, max_objects: int) -> Path:
    from modelpress.s3store import S3Store

    store = S3Store.from_uri(uri.rstrip("/"))
    objects = store.list_files(max_objects + 1)
    if not objects:
        raise InvalidInput(where, f"{uri} holds no objects")
    if len(objects) > max_objects:
        raise InvalidInput(where, f"{uri} holds more than {max_objects} objects")
    if sum(size for _, size in objects) > MAX_FOLDER_BYTES:
        raise InvalidInput(where, f"{uri} holds more than {MAX_FOLDER_BYTES} bytes")
    members = {key: folder_member(key, "", uri, where) for key, _ in objects}
    for key, member in members.items():
        store.get_file(key, destination.joinpath(*member.parts))
    return destination


def _fetch_s3(uri: str, destination: Path) -> None:
    from modelpress.store import open_store

    bucket_and_key = uri.removeprefix("s3://")
    bucket, _, key = bucket_and_key.partition("/")
    open_store(f"s3://{bucket}").get_file(key, destination)


def file_suffix(uri: str) -> str:
    return Path(urlparse(uri).path).suffix.lower()


def builtin_name(uri: str) -> str:
    """`builtin://digits?split=test` -> "digits"."""
    parsed = urlparse(uri)
    return parsed.netloc + parsed.path


def builtin_options(uri: str, where: str, known: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """The query of a `builtin://` uri, each key one of `known` and each value one it lists;
    anything else is bad input, never silently replaced by a default."""
    pairs = parse_qsl(urlparse(uri).query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise InvalidInput(where, f"{uri} repeats an option")
    for key, value in options.items():
        if key not in known:
            accepted = ", ".join(known) or "none"
            raise InvalidInput(where, f"{uri}: unknown option {key!r}; accepted: {accepted}")
        if value not in known[key]:
            raise InvalidInput(where, f"{uri}: {key}={value!r} is not one of "
                                      f"{', '.join(known[key])}")
    return options


def assert_fetchable(uri: str, where: str) -> None:
    """Fail early on schemes this installation cannot fetch (hf:// needs the internet)."""
    if uri.startswith("hf://"):
        raise InvalidInput(where, f"{uri}: hf:// needs network access to the Hugging Face hub; "
                                  "export the model to ONNX or a state_dict and use file:// or s3://")
    if get_settings().s3_endpoint is None and uri.startswith("s3://"):
        raise InvalidInput(where, f"{uri}: set MODELPRESS_S3_ENDPOINT to read from S3")


# ---------------------------------------------------------------------------- http(s)
# An http(s) input is a tenant's choice of where the step pod connects: every address it
# reaches (redirects included) is checked, and the socket goes to the very address that
# was checked, so a name that resolves anew between check and connect gains nothing.

MAX_REDIRECTS = 5
_CHUNK_BYTES = 1 << 20
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ADDRESS_KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")


class _Refused(Exception):
    """A download the limits refuse. Not an OSError, so urllib passes it through as is."""


def address_refusal(address: str) -> str | None:
    """The kind of `address` ("loopback", "private", …) when http(s) inputs may not reach
    it by default, or None for a public one. An IPv6 address that carries an IPv4 one
    (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it carries."""
    ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 zone is no part of it
    ip = _carried_ipv4(ip) or ip
    for kind in _ADDRESS_KINDS:
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def _carried_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
                  ) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def _connect_checked(address: tuple[str, int], timeout: float | None = None,
                     source_address: tuple[str, int] | None = None) -> socket.socket:
    """socket.create_connection, to the resolved addresses the policy allows only."""
    allow_private = get_settings().allow_private_http
    host, port = address
    refused, failure = "", None
    for family, kind, protocol, _, peer in socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM):
        refusal = None if allow_private else address_refusal(str(peer[0]))
        if refusal:
            refused = f"{host} resolves to {peer[0]}, a {refusal} address"
            continue
        connection = socket.socket(family, kind, protocol)
        try:
            connection.settimeout(timeout)
            connection.connect(peer)
            return connection
        except OSError as error:
            connection.close()
            failure = error
    if failure is not None:
        raise failure
    raise _Refused(f"{refused}; http(s) inputs may not reach private networks "
                   "(MODELPRESS_ALLOW_PRIVATE_HTTP=true allows it)")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_checked


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_checked


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPSConnection, req, context=ssl.create_default_context())


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, to http(s) only, never in a loop; the
    connection handlers check each new address. One instance serves one download."""

    max_repeats = max_redirections = MAX_REDIRECTS + 1  # the checks below refuse first

    def __init__(self, first: str) -> None:
        super().__init__()
        self._visited = [first]

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                       headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urlparse(urljoin(req.full_url, location)).scheme
        if scheme not in ("http", "https"):
            raise _Refused(f"redirected to a {scheme}:// uri; only http(s) is followed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if "@" in urlparse(newurl).netloc:
            raise _Refused("redirected to a uri with credentials in it")
        if newurl in self._visited:
            raise _Refused(f"redirect loop: {newurl} was visited before")
        if len(self._visited) > MAX_REDIRECTS:
            raise _Refused(f"more than {MAX_REDIRECTS} redirects")
        self._visited.append(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(uri: str) -> urllib.request.OpenerDirector:
    """An opener with no proxy and no scheme but http(s): a tenant's uri is reached
    directly, or not at all."""
    opener = urllib.request.OpenerDirector()
    for handler in (_CheckedHTTPHandler(), _CheckedHTTPSHandler(),
                    _CheckedRedirects(uri), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def _fetch_http(uri: str, destination: Path, where: str) -> None:
    """Download `uri` within MODELPRESS_HTTP_MAX_BYTES and MODELPRESS_HTTP_TIMEOUT_SECONDS
    (checked between reads, each of which waits MODELPRESS_HTTP_READ_TIMEOUT_SECONDS at
    most); on any refusal nothing is left at `destination`."""
    settings = get_settings()
    deadline = time.monotonic() + settings.http_timeout_seconds
    try:
        with _opener(uri).open(uri, timeout=settings.http_read_timeout_seconds) as response:
            _copy_bounded(response, destination, deadline, settings.http_max_bytes)
    except BaseException as error:
        destination.unlink(missing_ok=True)
        problem = _http_problem(error)
        if problem is None:
            raise
        raise InvalidInput(where, f"{uri}: {problem}") from None


def _copy_bounded(response: http.client.HTTPResponse, destination: Path, deadline: float,
                  max_bytes: int) -> None:
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise _Refused(f"{int(announced)} bytes announced, over MODELPRESS_HTTP_MAX_BYTES "
                       f"({max_bytes})")
    copied = 0
    with destination.open("wb") as out:
        while chunk := response.read1(_CHUNK_BYTES):
            copied += len(chunk)
            if copied > max_bytes:
                raise _Refused(f"more than MODELPRESS_HTTP_MAX_BYTES ({max_bytes} bytes)")
            if time.monotonic() > deadline:
                raise _Refused("the download took longer than MODELPRESS_HTTP_TIMEOUT_SECONDS")
            out.write(chunk)


def _http_problem(error: BaseException) -> str | None:
    """One line for what went wrong with a download; None for what is not the input's."""
    if isinstance(error, _Refused):
        return str(error)
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, _Refused):
            return str(reason)
        return f"cannot be fetched ({reason})"
    if isinstance(error, TimeoutError):
        return "the server stopped sending (MODELPRESS_HTTP_READ_TIMEOUT_SECONDS)"
    if isinstance(error, (OSError, http.client.HTTPException)):
        return f"cannot be fetched ({type(error).__name__}: {error})"
    return None
