"""The artifact store on an S3 endpoint (MinIO, SeaweedFS, AWS S3, ...).

A write is uploaded to a temporary key under `<prefix>/.tmp/`, copied server-side to its
final key and only then deleted, so a crash never leaves a final-looking object. Every
object carries the sha256 of its bytes as user metadata (`x-amz-meta-sha256`), which
`get_file` checks.

The endpoint comes from MODELPRESS_S3_ENDPOINT and the credentials from the standard
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optional AWS_SESSION_TOKEN). No message
raised here ever contains a credential.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from modelpress.errors import StoreError
from modelpress.settings import get_settings
from modelpress.store import StoredObject, parsed_uri, sha256_of

log = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_METADATA = "sha256"  # sent as the x-amz-meta-sha256 header
TEMPORARY_FOLDER = ".tmp"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned url may live

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
_TRANSIENT_CODES = {"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown"}
_REQUEST_ERRORS = (
    S3Error,
    ServerError,
    InvalidResponseError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for failures that may pass (server down, 5xx, throttling).

    The default sleeps 0.25 + 0.5 + 1.0 s between four attempts: long enough to ride out
    a restarting server, short enough that a wrong endpoint fails fast.
    """

    attempts: int = 4
    first_delay_s: float = 0.25
    max_delay_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def delays(self) -> Iterator[float]:
        """The pauses between attempts: one fewer than `attempts`."""
        delay = self.first_delay_s
        for _ in range(max(self.attempts, 1) - 1):
            yield min(delay, self.max_delay_s)
            delay *= 2


@dataclass(frozen=True)
class S3Connection:
    """Where the endpoint is and who we are there; repr never shows the secrets."""

    endpoint_url: str  # scheme://host[:port], safe to show
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    @property
    def secure(self) -> bool:
        return self.endpoint_url.startswith("https://")

    @property
    def host(self) -> str:
        return self.endpoint_url.split("://", 1)[1]


def normalize_endpoint(text: str) -> str:
    """`host:port`, `http://host:port` or `https://host:port/` → `scheme://host:port`.

    The scheme decides TLS; without one it is https. A path or embedded credentials are
    refused (the latter without echoing them).
    """
    candidate = text.strip()
    if "://" not in candidate:
        candidate = f"https://{candidate}"
    parsed = parsed_uri(candidate)
    if parsed.username is not None or parsed.password is not None:
        raise StoreError(
            "MODELPRESS_S3_ENDPOINT must not contain credentials; "
            "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StoreError(f"MODELPRESS_S3_ENDPOINT {text!r} is not an http(s) endpoint")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise StoreError(f"MODELPRESS_S3_ENDPOINT {text!r} must be scheme://host[:port] only")
    return f"{parsed.scheme}://{parsed.netloc}"


def connection_from_environment() -> S3Connection:
    """The endpoint from settings, the credentials from the standard AWS variables."""
    settings = get_settings()
    if not settings.s3_endpoint:
        raise StoreError("an s3:// location needs MODELPRESS_S3_ENDPOINT (e.g. http://minio:9000)")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access_key or not secret_key:
        raise StoreError(
            "an s3:// location needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to be set"
        )
    return S3Connection(
        endpoint_url=normalize_endpoint(settings.s3_endpoint),
        access_key=access_key,
        secret_key=secret_key,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        region=settings.s3_region,
    )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` → ("bucket", "some/prefix")."""
    parsed = parsed_uri(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"{uri}: not an s3://bucket[/prefix] uri")
    try:
        check_bucket_name(parsed.netloc)
    except ValueError:
        raise StoreError(f"{uri}: {parsed.netloc!r} is not a valid bucket name") from None
    return parsed.netloc, parsed.path.strip("/")


def _http_client() -> urllib3.PoolManager:
    """minio's own client retries 5 times on its own; ours does not, so RetryPolicy rules."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=False,
    )


def _is_transient(error: Exception) -> bool:
    if isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, ServerError):
        return error.status_code >= 500
    return isinstance(error, S3Error) and error.code in _TRANSIENT_CODES


def _reason(error: BaseException) -> str:
    """A short cause, e.g. 'Connection refused', taken from the OS error underneath.

    The full urllib3 text is avoided on purpose: it may quote a request url.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, S3Error):
        return error.code or type(error).__name__
    if isinstance(error, ServerError):
        return f"HTTP {error.status_code}"
    return type(error).__name__


class S3Store:
    """A bucket and a key prefix on an S3 endpoint."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        connection: S3Connection,
        *,
        create_buckets: bool = True,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.connection = connection
        self.endpoint = connection.endpoint_url
        self.create_buckets = create_buckets
        self.retry = retry or RetryPolicy()
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket_ready = False
        self._client = Minio(
            connection.host,
            access_key=connection.access_key,
            secret_key=connection.secret_key,
            session_token=connection.session_token,
            secure=connection.secure,
            region=connection.region,  # a known region: presigning needs no round trip
            http_client=_http_client(),
        )

    @classmethod
    def from_uri(cls, uri: str, retry: RetryPolicy | None = None) -> S3Store:
        """A store for `s3://bucket/prefix`, configured from the environment."""
        bucket, prefix = parse_s3_uri(uri)
        return cls(
            bucket,
            prefix,
            connection_from_environment(),
            create_buckets=get_settings().s3_create_buckets,
            retry=retry,
        )

    # --- the Store protocol -------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_name(key)}"

    def exists(self, key: str) -> bool:
        name = self._object_name(key)
        try:
            self._call(self.uri(key), lambda: self._client.stat_object(self.bucket, name))
        except _Missing:
            return False
        return True

    def put_file(self, local: Path, key: str) -> StoredObject:
        name = self._object_name(key)
        uri = self.uri(key)
        size_bytes = local.stat().st_size
        digest = sha256_of(local)
        self._ensure_bucket()
        temporary = self._temporary_name()
        try:
            self._upload(local, temporary, digest, uri)
            self._publish(temporary, name, digest, uri)
        finally:
            self._remove_quietly(temporary)
        return StoredObject(uri, digest, size_bytes)

    def get_file(self, key: str, local: Path) -> Path:
        """Download `key` to `local`; a file whose bytes do not match its sha256 never lands."""
        name = self._object_name(key)
        uri = self.uri(key)
        local.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
        os.close(handle)
        try:
            stat = self._call(
                uri,
                lambda: self._client.fget_object(
                    self.bucket, name, partial, tmp_file_path=f"{partial}.part"
                ),
            )
            expected = (stat.metadata or {}).get(f"x-amz-meta-{SHA256_METADATA}")
            if expected:
                _verify(Path(partial), expected.strip().lower(), uri)
            os.replace(partial, local)
        except _Missing:
            raise StoreError(f"{uri} does not exist") from None
        finally:
            Path(partial).unlink(missing_ok=True)
            Path(f"{partial}.part").unlink(missing_ok=True)
        return local

    # --- beyond the protocol ------------------------------------------------------------

    def list_files(self, limit: int) -> list[tuple[str, int]]:
        """(key relative to the store's prefix, size) of up to `limit` objects under the
        prefix; zero-byte keys ending in / are folder markers (S3 consoles write them), not
        files."""
        prefix = f"{self.prefix}/" if self.prefix else ""

        def listed() -> list[tuple[str, int]]:
            items = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            files = ((str(item.object_name), int(item.size or 0)) for item in items
                     if not (str(item.object_name).endswith("/") and not item.size))
            return list(itertools.islice(files, limit))

        objects = self._call(self.root_uri, listed)
        return [(name.removeprefix(prefix), size) for name, size in objects]

    def presigned_get(self, key: str, expires_seconds: int = 3600) -> str:
        """A plain http(s) url that fetches `key` without credentials until it expires.

        Computed locally: it does not check that the object exists.
        """
        if not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
            raise StoreError(
                f"a presigned url lives 1 to {MAX_PRESIGN_SECONDS} seconds, not {expires_seconds}"
            )
        return self._client.presigned_get_object(
            self.bucket, self._object_name(key), expires=timedelta(seconds=expires_seconds)
        )

    # --- internals ----------------------------------------------------------------------

    def _object_name(self, key: str) -> str:
        parts = [part for part in key.strip("/").split("/") if part not in ("", ".")]
        if not parts or ".." in parts:
            raise StoreError(f"key {key!r} is not a path inside {self.root_uri}")
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _temporary_name(self) -> str:
        leaf = f"{TEMPORARY_FOLDER}/{uuid.uuid4().hex}"
        return f"{self.prefix}/{leaf}" if self.prefix else leaf

    def _upload(self, local: Path, temporary: str, digest: str, uri: str) -> None:
        """fput_object switches to a multipart upload by itself for big files."""
        self._call(
            uri,
            lambda: self._client.fput_object(
                self.bucket, temporary, str(local), metadata={SHA256_METADATA: digest}
            ),
        )

    def _publish(self, temporary: str, name: str, digest: str, uri: str) -> None:
        """Server-side copy; metadata is restated because copies over 5 GiB drop it."""
        source = CopySource(self.bucket, temporary)
        self._call(
            uri,
            lambda: self._client.copy_object(
                self.bucket,
                name,
                source,
                metadata={SHA256_METADATA: digest},
                metadata_directive=REPLACE,
            ),
        )

    def _remove_quietly(self, temporary: str) -> None:
        """Best effort: a leftover under .tmp/ is litter, never a published object."""
        try:
            self._client.remove_object(self.bucket, temporary)
        except Exception as error:  # cleanup must never hide the real outcome
            log.warning("could not remove s3://%s/%s: %s", self.bucket, temporary, _reason(error))

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        where = f"s3://{self.bucket}"
        if not self._call(where, lambda: self._client.bucket_exists(self.bucket)):
            if not self.create_buckets:
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint} and "
                    "MODELPRESS_S3_CREATE_BUCKETS is false; create it first"
                )
            self._create_bucket(where)
        self._bucket_ready = True

    def _create_bucket(self, where: str) -> None:
        try:
            self._call(where, lambda: self._client.make_bucket(self.bucket))
        except StoreError:
            # Another writer may have created it between our check and our request.
            if not self._call(where, lambda: self._client.bucket_exists(self.bucket)):
                raise
        log.info("created bucket %s at %s", self.bucket, self.endpoint)

    def _call(self, uri: str, operation: Callable[[], T]) -> T:
        """Run one S3 request, retrying transient failures, and translate what is left.

        Raises _Missing for a missing object or bucket, StoreError for everything else.
        """
        delays = self.retry.delays()
        attempt = 1
        while True:
            try:
                return operation()
            except _REQUEST_ERRORS as error:
                delay = next(delays, None) if _is_transient(error) else None
                if delay is None:
                    raise self._translate(error, uri, attempt) from _cause(error)
            self.retry.sleep(delay)
            attempt += 1

    def _translate(self, error: Exception, uri: str, attempts: int) -> Exception:
        if isinstance(error, S3Error) and error.code in _MISSING_CODES:
            return _Missing(f"{uri} does not exist")
        if isinstance(error, S3Error) and error.code in _CREDENTIAL_CODES:
            return StoreError(
                f"{self.endpoint} refused access to {uri} ({error.code}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        if _is_transient(error):
            return StoreError(
                f"cannot reach the S3 endpoint {self.endpoint} for {uri}: "
                f"{_reason(error)} (after {attempts} attempts)"
            )
        if isinstance(error, S3Error):
            return StoreError(f"{uri}: {self.endpoint} answered {error.code}: {error.message}")
        return StoreError(f"{uri}: unexpected answer from {self.endpoint} ({_reason(error)})")


class _Missing(StoreError):
    """The object or its bucket is not there; callers decide whether that is an error."""


def _cause(error: Exception) -> Exception | None:
    """Keep the chain for debugging unless the error talks about credentials."""
    if isinstance(error, S3Error) and error.code in _CREDENTIAL_CODES:
        return None
    return error


def _verify(path: Path, expected: str, uri: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise StoreError(
            f"{uri} is corrupt or was changed: its bytes hash to sha256 {actual}, "
            f"its metadata says {expected}"
        )
