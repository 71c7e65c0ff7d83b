"""S3Store against a real S3 server (SeaweedFS on 127.0.0.1, credentials enforced)."""

from __future__ import annotations

import errno
import io
import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from minio import Minio

from modelpress.errors import StoreError
from modelpress.s3store import RetryPolicy, S3Store
from modelpress.store import open_store, sha256_of


class S3Server(Protocol):
    """What conftest's `s3_server` fixture yields."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Minio: ...


FAST_RETRY = RetryPolicy(attempts=3, first_delay_s=0.01, max_delay_s=0.05)
# More buckets than the whole suite makes on the one session server.
BUCKETS_A_SESSION_MAY_USE = 80


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_random(path: Path, size_bytes: int) -> Path:
    with path.open("wb") as handle:
        remaining = size_bytes
        while remaining:
            chunk = os.urandom(min(remaining, 1 << 20))
            handle.write(chunk)
            remaining -= len(chunk)
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound by us, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        return int(holder.getsockname()[1])


def temporary_objects(client: Minio, bucket: str) -> list[str]:
    """Whatever a write left under any `.tmp/` folder of the bucket."""
    names = [item.object_name or "" for item in client.list_objects(bucket, recursive=True)]
    return [name for name in names if "/.tmp/" in f"/{name}"]


@pytest.fixture
def store(s3_env: S3Server, bucket_name: str) -> S3Store:
    return S3Store.from_uri(f"s3://{bucket_name}/jobs/minilm", retry=FAST_RETRY)


def test_open_store_picks_s3(s3_env: S3Server, bucket_name: str) -> None:
    store = open_store(f"s3://{bucket_name}/jobs/minilm/")
    assert isinstance(store, S3Store)
    assert store.root_uri == f"s3://{bucket_name}/jobs/minilm"
    assert store.uri("model/a.onnx") == f"s3://{bucket_name}/jobs/minilm/model/a.onnx"


def test_small_file_round_trip(store: S3Store, s3_env: S3Server, tmp_path: Path) -> None:
    local = write_bytes(tmp_path / "in" / "results.json", b'{"compressionRatio": 3.9}\n')

    stored = store.put_file(local, "results.json")

    assert stored.uri == f"s3://{store.bucket}/jobs/minilm/results.json"
    assert stored.sha256 == sha256_of(local)
    assert stored.size_bytes == local.stat().st_size
    stat = s3_env.client().stat_object(store.bucket, "jobs/minilm/results.json")
    assert stat.metadata is not None
    assert stat.metadata["x-amz-meta-sha256"] == stored.sha256
    assert temporary_objects(s3_env.client(), store.bucket) == []

    fetched = store.get_file("results.json", tmp_path / "out" / "results.json")
    assert fetched.read_bytes() == local.read_bytes()
    assert sha256_of(fetched) == stored.sha256


def test_large_file_goes_multipart_and_round_trips(
    store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local = write_random(tmp_path / "model.bin", 50 * 1024 * 1024 + 12345)
    multipart_uploads: list[str] = []
    start_multipart = store._client._create_multipart_upload

    def spy(bucket: str, name: str, headers: Any) -> str:
        multipart_uploads.append(name)
        return start_multipart(bucket, name, headers)

    monkeypatch.setattr(store._client, "_create_multipart_upload", spy)

    stored = store.put_file(local, "model/model.bin")

    assert len(multipart_uploads) == 1 and "/.tmp/" in multipart_uploads[0]
    assert stored.size_bytes == local.stat().st_size
    fetched = store.get_file("model/model.bin", tmp_path / "fetched.bin")
    assert sha256_of(fetched) == sha256_of(local) == stored.sha256


def test_exists_sees_objects_not_prefixes(store: S3Store, tmp_path: Path) -> None:
    local = write_bytes(tmp_path / "report.html", b"<html></html>")
    assert not store.exists("report/report.html")

    store.put_file(local, "report/report.html")

    assert store.exists("report/report.html")
    assert not store.exists("report")
    assert not store.exists("report/other.html")


def test_presigned_get_needs_no_credentials(store: S3Store, tmp_path: Path) -> None:
    local = write_bytes(tmp_path / "lineage.json", b'{"steps": []}')
    store.put_file(local, "lineage.json")

    url = store.presigned_get("lineage.json", expires_seconds=120)

    assert url.startswith(store.endpoint)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == local.read_bytes()


def test_presigned_get_refuses_an_impossible_lifetime(store: S3Store) -> None:
    with pytest.raises(StoreError, match="presigned"):
        store.presigned_get("lineage.json", expires_seconds=30 * 24 * 3600)


OPERATIONS: dict[str, Callable[[S3Store, Path], object]] = {
    "put": lambda store, tmp: store.put_file(write_bytes(tmp / "a.bin", b"a"), "a.bin"),
    "get": lambda store, tmp: store.get_file("a.bin", tmp / "out.bin"),
    "exists": lambda store, tmp: store.exists("a.bin"),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_wrong_credentials_are_one_clear_error(
    operation: str,
    s3_env: S3Server,
    bucket_name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    s3_env.client().make_bucket(bucket_name)
    wrong_secret = "not-the-secret-" + "x" * 24
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    store = S3Store.from_uri(f"s3://{bucket_name}/jobs", retry=FAST_RETRY)

    with pytest.raises(StoreError) as caught:
        OPERATIONS[operation](store, tmp_path)

    message = str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in message and s3_env.endpoint in message
    assert "Traceback" not in message and "\n" not in message
    for secret in (wrong_secret, s3_env.secret_key, s3_env.access_key):
        assert secret not in message
        assert secret not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_missing_bucket_is_created_when_allowed(
    store: S3Store, s3_env: S3Server, tmp_path: Path
) -> None:
    assert not s3_env.client().bucket_exists(store.bucket)

    store.put_file(write_bytes(tmp_path / "a.bin", b"a"), "a.bin")

    assert s3_env.client().bucket_exists(store.bucket)
    assert store.exists("a.bin")


def test_missing_bucket_is_an_error_when_creation_is_off(
    s3_env: S3Server, bucket_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPRESS_S3_CREATE_BUCKETS", "false")
    store = S3Store.from_uri(f"s3://{bucket_name}/jobs", retry=FAST_RETRY)

    with pytest.raises(StoreError, match=bucket_name) as caught:
        store.put_file(write_bytes(tmp_path / "a.bin", b"a"), "a.bin")

    assert "MODELPRESS_S3_CREATE_BUCKETS" in str(caught.value)
    assert not s3_env.client().bucket_exists(bucket_name)


def test_missing_object_names_its_uri(store: S3Store, s3_env: S3Server, tmp_path: Path) -> None:
    s3_env.client().make_bucket(store.bucket)
    target = tmp_path / "out" / "model.onnx"

    with pytest.raises(StoreError) as caught:
        store.get_file("model.onnx", target)

    assert str(caught.value) == f"s3://{store.bucket}/jobs/minilm/model.onnx does not exist"
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("metadata", ["kept", "rewritten"])
def test_tampered_object_is_detected(
    metadata: str, store: S3Store, s3_env: S3Server, tmp_path: Path
) -> None:
    stored = store.put_file(write_bytes(tmp_path / "model.onnx", b"good weights"), "model.onnx")
    claimed = stored.sha256 if metadata == "kept" else "0" * 64
    evil = b"evil weights"
    s3_env.client().put_object(
        store.bucket,
        "jobs/minilm/model.onnx",
        io.BytesIO(evil),
        len(evil),
        metadata={"sha256": claimed},
    )
    target = tmp_path / "out" / "model.onnx"

    with pytest.raises(StoreError, match="sha256") as caught:
        store.get_file("model.onnx", target)

    assert stored.uri in str(caught.value)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_unreachable_endpoint_retries_then_names_it(
    s3_env: S3Server, bucket_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dead_endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", dead_endpoint)
    pauses: list[float] = []
    retry = RetryPolicy(attempts=4, first_delay_s=0.01, max_delay_s=0.03, sleep=pauses.append)
    store = S3Store.from_uri(f"s3://{bucket_name}/jobs", retry=retry)

    with pytest.raises(StoreError) as caught:
        store.put_file(write_bytes(tmp_path / "a.bin", b"a"), "a.bin")

    message = str(caught.value)
    assert dead_endpoint in message and "after 4 attempts" in message
    assert s3_env.secret_key not in message
    assert pauses == [0.01, 0.02, 0.03]
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", s3_env.endpoint)
    assert not S3Store.from_uri(f"s3://{bucket_name}/jobs").exists("a.bin")


def test_default_retry_is_bounded() -> None:
    pauses = list(RetryPolicy().delays())
    assert len(pauses) >= 2
    assert pauses == sorted(pauses)
    assert sum(pauses) <= 5.0


def test_failed_publish_leaves_no_object(
    store: S3Store, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken_copy(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the copy died half way")

    monkeypatch.setattr(store._client, "copy_object", broken_copy)

    with pytest.raises(RuntimeError):
        store.put_file(write_bytes(tmp_path / "a.bin", b"a"), "a.bin")

    assert not store.exists("a.bin")
    assert temporary_objects(s3_env.client(), store.bucket) == []


def test_failed_upload_leaves_no_object(
    store: S3Store, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The upload dies after the bytes reached the temporary key: nothing is published."""
    upload = store._client.fput_object

    def upload_then_die(*args: object, **kwargs: object) -> None:
        upload(*args, **kwargs)  # type: ignore[arg-type]
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(store._client, "fput_object", upload_then_die)

    with pytest.raises(StoreError, match="Connection reset by peer"):
        store.put_file(write_bytes(tmp_path / "a.bin", b"a"), "a.bin")

    assert not store.exists("a.bin")
    assert temporary_objects(s3_env.client(), store.bucket) == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELPRESS_S3_ENDPOINT", "", "MODELPRESS_S3_ENDPOINT"),
        ("MODELPRESS_S3_ENDPOINT", "http://user:hunter2@127.0.0.1:9", "must not contain"),
        ("MODELPRESS_S3_ENDPOINT", "ftp://127.0.0.1:9", "not an http"),
        ("AWS_SECRET_ACCESS_KEY", "", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_configuration_is_refused(
    variable: str, value: str, expected: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(StoreError, match=expected) as caught:
        S3Store.from_uri("s3://models/jobs")

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("key", ["../escape.bin", "a/../../b", "", "/"])
def test_keys_stay_under_the_prefix(store: S3Store, key: str) -> None:
    with pytest.raises(StoreError, match="not a path inside"):
        store.uri(key)


def test_the_server_takes_more_buckets_than_a_disk_sized_volume_count(s3_env: S3Server) -> None:
    """Each bucket takes a volume of its own; the suite's server must not run out of them
    (it did, at the 22nd bucket, when `weed mini` sized its volumes by the free disk)."""
    client = s3_env.client()
    buckets = [f"mp-many-{index:03d}-{os.getpid()}" for index in range(BUCKETS_A_SESSION_MAY_USE)]
    for bucket in buckets:
        client.make_bucket(bucket)
        client.put_object(bucket, "a.bin", io.BytesIO(b"a"), 1)

    assert all(client.stat_object(bucket, "a.bin").size == 1 for bucket in buckets)
