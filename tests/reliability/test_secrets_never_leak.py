"""Credentials never leak: a planted S3 secret (and session token) appears nowhere a user
or another team can read it.

The secret is the SeaweedFS server's own (a random token). A digits run publishes to the
server with it; then the CLI and the operator fail against the server with a wrong secret
and a session token, each distinctive. Every place is searched: the CLI's stdout and
stderr, every object in the bucket (bytes and metadata; results.json, report.html and
lineage.json included), files the run left behind, and, for the operator, job statuses,
Events, the operator's log, its metrics, and the run folders with the workers' logs.

`modelpress compile` in a shell holding the credentials writes none of them into the
pipeline, and a uri holding credentials (`s3://key:secret@…`) is refused by the CLI and
the operator alike, naming the field and never repeating the secret.

A planted KFP bearer token (MODELPRESS_KFP_TOKEN_PATH) goes the same way: an operator on
the KFP backend submits one job with it to a KFP stand-in that demands it, then a wrong
token is refused; neither token shows in statuses, Events or the operator's debug log.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cli_runs import LIGHT_SPEC, cli, environment, job_document, write_job
from modelpress_test_servers import S3Server
from standin_operator import (
    TERMINAL,
    OperatorProcess,
    create_job,
    events,
    jobs,
    phase_of,
    start_standin,
    wait_until,
)

pytestmark = pytest.mark.e2e


# The secret of a uri that holds credentials, in a job the operator must refuse.
URI_SECRET = f"in-uri-{secrets.token_urlsafe(24)}"


@dataclass(frozen=True)
class Planted:
    """The secrets this module plants, by what they are."""

    secret_key: str  # the server's real AWS_SECRET_ACCESS_KEY
    wrong_secret_key: str
    session_token: str
    kfp_token: str
    wrong_kfp_token: str

    def all(self) -> dict[str, str]:
        return {"AWS_SECRET_ACCESS_KEY": self.secret_key,
                "wrong AWS_SECRET_ACCESS_KEY": self.wrong_secret_key,
                "AWS_SESSION_TOKEN": self.session_token,
                "the KFP token": self.kfp_token, "a wrong KFP token": self.wrong_kfp_token}


@pytest.fixture(scope="module")
def planted(s3_server: S3Server) -> Planted:
    return Planted(s3_server.secret_key, f"wrong-{secrets.token_urlsafe(24)}",
                   f"token-{secrets.token_urlsafe(24)}", f"kfp-{secrets.token_urlsafe(24)}",
                   f"wrong-kfp-{secrets.token_urlsafe(24)}")


def assert_no_secret(text: str | bytes, where: str, planted: Planted) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    for name, value in planted.all().items():
        assert value.encode() not in data, f"{name} leaked into {where}"


def assert_no_secret_in_files(folder: Path, planted: Planted) -> int:
    """Search every file under `folder`; how many there were."""
    count = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert_no_secret(path.read_bytes(), str(path), planted)
            count += 1
    return count


def bucket_objects(server: S3Server, bucket: str) -> dict[str, tuple[bytes, str]]:
    """Every object in `bucket` (temporary ones included): name -> (bytes, metadata)."""
    client = server.client()
    found = {}
    for listed in client.list_objects(bucket, recursive=True):
        name = str(listed.object_name)
        response = client.get_object(bucket, name)
        try:
            found[name] = (response.read(), json.dumps(dict(response.headers)))
        finally:
            response.close()
            response.release_conn()
    return found


def assert_bucket_clean(server: S3Server, bucket: str, prefix: str,
                        planted: Planted) -> dict[str, tuple[bytes, str]]:
    objects = bucket_objects(server, bucket)
    for name, (data, metadata) in objects.items():
        assert_no_secret(data, f"s3://{bucket}/{name}", planted)
        assert_no_secret(metadata, f"the metadata of s3://{bucket}/{name}", planted)
    return {name.removeprefix(prefix): value for name, value in objects.items()}


# ------------------------------------------------------------------------------- CLI


def cli_environment(server: S3Server, folder: Path, secret_key: str,
                    session_token: str | None = None) -> dict[str, str]:
    credentials = {"AWS_SESSION_TOKEN": session_token} if session_token else {}
    return environment(folder, MODELPRESS_S3_ENDPOINT=server.endpoint,
                       AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=secret_key,
                       **credentials)


@dataclass(frozen=True)
class Published:
    folder: Path
    bucket: str
    prefix: str
    completed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def published(s3_server: S3Server, planted: Planted,
              tmp_path_factory: pytest.TempPathFactory) -> Published:
    """`modelpress run` of the (trimmed) digits example with --output s3://…"""
    folder = tmp_path_factory.mktemp("cli-publish")
    bucket, prefix = f"leak-{secrets.token_hex(4)}", "team-a/digits/"
    job = write_job(folder, "digits-light", LIGHT_SPEC)
    completed = cli("run", str(job), "--output", f"s3://{bucket}/{prefix}", cwd=folder,
                    env=cli_environment(s3_server, folder, planted.secret_key))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return Published(folder, bucket, prefix, completed)


def test_a_published_run_shows_no_secret(published: Published, planted: Planted) -> None:
    assert_no_secret(published.completed.stdout, "stdout", planted)
    assert_no_secret(published.completed.stderr, "stderr", planted)
    assert '"compressionRatio"' in published.completed.stdout


def test_no_published_object_holds_the_secret(s3_server: S3Server, published: Published,
                                              planted: Planted) -> None:
    objects = assert_bucket_clean(s3_server, published.bucket, published.prefix, planted)
    assert {"results.json", "report.html", "lineage.json", "model.onnx"} <= set(objects)
    results = json.loads(objects["results.json"][0])
    # The presigned report url is the one credential-like thing published: it carries a
    # signature derived from the secret, never the secret.
    assert "X-Amz-Signature=" in results["artifacts"]["reportUrl"]


def test_nothing_left_on_disk_holds_the_secret(published: Published, planted: Planted) -> None:
    assert_no_secret_in_files(published.folder, planted)


@pytest.mark.parametrize("how", ["wrong-secret", "credentials-in-endpoint"])
def test_a_refused_model_download_names_the_field_not_the_secret(
        s3_server: S3Server, published: Published, planted: Planted, tmp_path: Path,
        how: str) -> None:
    """The model is the one the first run published, read back with bad credentials."""
    model = f"s3://{published.bucket}/{published.prefix}model.onnx"
    job = write_job(tmp_path, "from-s3", {**LIGHT_SPEC, "model": {
        "uri": model, "task": "classification"}})
    environment = cli_environment(s3_server, tmp_path, planted.wrong_secret_key,
                                  planted.session_token)
    if how == "credentials-in-endpoint":
        environment.update(AWS_SECRET_ACCESS_KEY=planted.secret_key,
                           MODELPRESS_S3_ENDPOINT=s3_server.endpoint.replace(
                               "://", f"://{s3_server.access_key}:{planted.secret_key}@"))
    completed = cli("run", str(job), "--output", str(tmp_path / "out"), cwd=tmp_path,
                    env=environment)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1 and "spec.model.uri" in lines[0], completed.stderr
    assert_no_secret(completed.stdout + completed.stderr, "the CLI's output", planted)
    assert not (tmp_path / "out").exists()


def test_verify_with_a_wrong_secret_fails_without_showing_it(
        s3_server: S3Server, published: Published, planted: Planted, tmp_path: Path) -> None:
    completed = cli("verify", f"s3://{published.bucket}/{published.prefix}", cwd=tmp_path,
                    env=cli_environment(s3_server, tmp_path, planted.wrong_secret_key,
                                        planted.session_token))
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1, completed.stderr
    assert len(lines) == 1 and "refused access" in lines[0], completed.stderr
    assert_no_secret(completed.stdout + completed.stderr, "the CLI's output", planted)


def test_a_compiled_pipeline_holds_no_secret(s3_server: S3Server, planted: Planted,
                                             tmp_path: Path) -> None:
    """`modelpress compile` in a shell holding the platform's credentials (and naming their
    Secret, as MODELPRESS_S3_SECRET once did), for a cluster whose steps read theirs from
    the job namespace's storage Secret: the pipeline names that Secret, never the
    platform's, and no value in either."""
    job = write_job(tmp_path, "digits-light", LIGHT_SPEC)
    environment = {**cli_environment(s3_server, tmp_path, planted.secret_key,
                                     planted.session_token),
                   "MODELPRESS_S3_SECRET": "modelpress-s3-credentials"}
    completed = cli("compile", str(job), "-o", str(tmp_path / "ir.yaml"), "--artifacts",
                    "s3://modelpress/team-a/digits-light/", cwd=tmp_path, env=environment)
    assert completed.returncode == 0, completed.stderr
    compiled = (tmp_path / "ir.yaml").read_text()
    assert "modelpress-storage" in compiled and s3_server.endpoint in compiled
    assert "modelpress-s3-credentials" not in compiled
    assert_no_secret(compiled, "the compiled pipeline", planted)
    assert_no_secret(completed.stdout + completed.stderr, "the CLI's output", planted)


def credentials_in(field: str, access_key: str, secret_key: str) -> dict[str, Any]:
    """LIGHT_SPEC with `field` (model or output) a uri holding these credentials."""
    uri = f"s3://{access_key}:{secret_key}@leak-bucket/team-a/model.onnx"
    if field == "model":
        return {**LIGHT_SPEC, "model": {"uri": uri, "task": "classification"}}
    return {**LIGHT_SPEC, "output": uri.removesuffix("model.onnx")}


@pytest.mark.parametrize("field", ["model", "output"])
@pytest.mark.parametrize("command", ["compile", "run"])
def test_a_uri_holding_credentials_is_refused_without_showing_them(
        s3_server: S3Server, planted: Planted, tmp_path: Path, command: str,
        field: str) -> None:
    job = write_job(tmp_path, "credentials", credentials_in(field, s3_server.access_key,
                                                            planted.secret_key))
    written = tmp_path / ("ir.yaml" if command == "compile" else "modelpress-out")
    arguments = ("-o", str(written)) if command == "compile" else ()
    completed = cli(command, str(job), *arguments, cwd=tmp_path,
                    env=cli_environment(s3_server, tmp_path, planted.secret_key))
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1 and f"spec.{field}" in lines[0] \
        and "a uri may not hold credentials" in lines[0], completed.stderr
    assert_no_secret(completed.stdout + completed.stderr, "the CLI's output", planted)
    assert not written.exists()


# -------------------------------------------------------------------------- operator


@dataclass(frozen=True)
class OperatorOutcome:
    root: Path
    bucket: str
    jobs: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    metrics: str


def _finished(api: Any, name: str) -> bool:
    return phase_of(api, name) in TERMINAL


@pytest.fixture(scope="module")
def operator_outcome(s3_server: S3Server, planted: Planted,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorOutcome]:
    """One job published with the right secret, then (the operator restarted with a wrong
    secret and a session token) one whose publishing is refused."""
    root = tmp_path_factory.mktemp("operator-leak")
    bucket = f"leak-op-{secrets.token_hex(4)}"
    api = start_standin()
    s3 = {"MODELPRESS_S3_ENDPOINT": s3_server.endpoint,
          "MODELPRESS_DEFAULT_OUTPUT": f"s3://{bucket}/{{namespace}}/{{name}}/",
          "MODELPRESS_NAMESPACE_PREFIXES": json.dumps([f"s3://{bucket}/{{namespace}}/"]),
          "MODELPRESS_LOG_DEBUG": "true", "AWS_ACCESS_KEY_ID": s3_server.access_key}
    metrics = []
    try:
        for name, secret, token in (("published", planted.secret_key, None),
                                    ("refused", planted.wrong_secret_key,
                                     planted.session_token)):
            credentials = {"AWS_SECRET_ACCESS_KEY": secret, **(
                {"AWS_SESSION_TOKEN": token} if token else {})}
            operator = OperatorProcess(root, api, name=f"operator-{name}",
                                       extra_env={**s3, **credentials})
            operator.start()
            try:
                create_job(api, job_document(name, LIGHT_SPEC))
                if name == "published":  # and one whose model uri holds credentials
                    create_job(api, job_document("credentials", credentials_in(
                        "model", s3_server.access_key, URI_SECRET)))
                    wait_until("job credentials to be refused",
                               partial(_finished, api, "credentials"), timeout=60)
                wait_until(f"job {name} to finish", partial(_finished, api, name), timeout=120)
                metrics.append(operator.metrics())
            finally:
                operator.stop()
        yield OperatorOutcome(root, bucket, jobs(api), events(api), "\n".join(metrics))
    finally:
        api.stop()


def test_the_operator_publishes_and_refuses_as_expected(operator_outcome: OperatorOutcome
                                                        ) -> None:
    """The two paths really ran: one job succeeded through S3, one was refused by it."""
    published = operator_outcome.jobs["published"]["status"]
    refused = operator_outcome.jobs["refused"]["status"]
    assert published["phase"] == "Succeeded", json.dumps(published, indent=1)
    assert published["artifacts"]["output"].startswith(f"s3://{operator_outcome.bucket}/")
    assert refused["phase"] == "Failed", json.dumps(refused, indent=1)
    message = next(c["message"] for c in refused["conditions"] if c["type"] == "Succeeded")
    assert "refused access" in message, message


def test_a_job_with_credentials_in_a_uri_fails_without_showing_them(
        operator_outcome: OperatorOutcome) -> None:
    """The API server's schema refuses such a uri at `kubectl apply`; the stand-in admits
    it, so the operator must refuse it too, and never repeat it in a status or Event. (Its
    spec, the tenant's own text, and the debug log of the object as watched, still hold it.)"""
    status = operator_outcome.jobs["credentials"]["status"]
    succeeded = _condition(operator_outcome.jobs["credentials"])
    assert status["phase"] == "Failed" and succeeded["reason"] == "InvalidSpec", status
    assert succeeded["message"].startswith("spec.model.uri: a uri may not hold credentials")
    assert URI_SECRET not in json.dumps(status)
    assert URI_SECRET not in json.dumps(operator_outcome.events)
    assert URI_SECRET not in operator_outcome.metrics


def test_statuses_and_events_hold_no_secret(operator_outcome: OperatorOutcome,
                                            planted: Planted) -> None:
    for name, job in operator_outcome.jobs.items():
        assert_no_secret(json.dumps(job), f"job {name} (status, annotations)", planted)
    assert operator_outcome.events, "the operator posted no Events"
    assert_no_secret(json.dumps(operator_outcome.events), "the Events", planted)
    assert_no_secret(operator_outcome.metrics, "the operator's metrics", planted)


def test_operator_logs_and_run_folders_hold_no_secret(operator_outcome: OperatorOutcome,
                                                      planted: Planted) -> None:
    """The operators' logs (debug: every patch), the runs' request.json and worker.log."""
    logs = sorted(operator_outcome.root.glob("operator-*.log"))
    assert len(logs) == 2 and all(log.stat().st_size for log in logs)
    assert assert_no_secret_in_files(operator_outcome.root, planted) >= 6


def test_the_operators_bucket_holds_no_secret(s3_server: S3Server,
                                              operator_outcome: OperatorOutcome,
                                              planted: Planted) -> None:
    objects = assert_bucket_clean(s3_server, operator_outcome.bucket, "", planted)
    assert "default/published/results.json" in objects
    assert not any(name.startswith("default/refused/") and ".tmp" not in name
                   for name in objects)


# ------------------------------------------------------------------- the KFP bearer token


@dataclass
class KfpOutcome:
    root: Path
    jobs: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    authorizations: list[str | None]


def _condition(job: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (job.get("status") or {}).get("conditions", [])
                 if c["type"] == "Succeeded"), {})


@pytest.fixture(scope="module")
def kfp_outcome(planted: Planted, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[KfpOutcome]:
    from kfp_standin import KfpStandIn

    root = tmp_path_factory.mktemp("kfp-leak")
    token_file = root / "kfp-token"
    token_file.write_text(planted.kfp_token)
    api, kfp = start_standin(), KfpStandIn().start()
    kfp.state.token = planted.kfp_token
    operator = OperatorProcess(root, api, backend="kfp", name="operator-kfp", extra_env={
        "MODELPRESS_KFP_HOST": kfp.url, "MODELPRESS_KFP_TOKEN_PATH": str(token_file),
        "MODELPRESS_KFP_ATTEMPTS": "1", "MODELPRESS_LOG_DEBUG": "true",
        "MODELPRESS_DEFAULT_OUTPUT": "s3://modelpress/{namespace}/{name}/"})
    try:
        operator.start()
        create_job(api, job_document("kfp-accepted", LIGHT_SPEC))
        wait_until("a run for kfp-accepted", lambda: (jobs(api).get("kfp-accepted", {})
                                                      .get("status") or {}).get("runId"), 60)
        token_file.write_text(planted.wrong_kfp_token)  # rotated to one the API refuses
        create_job(api, job_document("kfp-refused", LIGHT_SPEC))
        wait_until("kfp-refused to be refused", lambda: "401" in _condition(
            jobs(api).get("kfp-refused", {})).get("message", ""), 60)
        yield KfpOutcome(root, jobs(api), events(api), list(kfp.state.authorizations))
    finally:
        operator.stop()
        kfp.stop()
        api.stop()


def test_the_kfp_token_is_sent_and_a_wrong_one_refused(kfp_outcome: KfpOutcome,
                                                       planted: Planted) -> None:
    assert f"Bearer {planted.kfp_token}" in kfp_outcome.authorizations
    assert f"Bearer {planted.wrong_kfp_token}" in kfp_outcome.authorizations
    assert None not in kfp_outcome.authorizations  # no request went without one
    refused = _condition(kfp_outcome.jobs["kfp-refused"])
    assert "refused: HTTP 401" in refused["message"], refused


def test_no_kfp_token_in_statuses_events_or_the_log(kfp_outcome: KfpOutcome,
                                                   planted: Planted) -> None:
    for name, job in kfp_outcome.jobs.items():
        assert_no_secret(json.dumps(job), f"job {name}", planted)
    assert_no_secret(json.dumps(kfp_outcome.events), "the Events", planted)
    log = kfp_outcome.root / "operator-kfp.log"
    assert log.stat().st_size
    assert_no_secret(log.read_bytes(), "the operator's log", planted)
