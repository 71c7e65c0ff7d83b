"""Promotion through a real MLflow model registry (spec.promotion.registry).

The operator's path: the local backend runs a fake pipeline (fake_runners.succeed) and
records what it published; the controller judges, reads the run's files back with their
recorded digests and registers them on a real `mlflow server` (sqlite, local artifacts).
The CLI's path: `modelpress run` in-process, its pipeline the same fake run, judged and
registered by the CLI's own code. Each test uses registered models of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_server import (  # noqa: F401 - the fixtures
    MlflowServer,
    free_port,
    mlflow_env_fixture,
    mlflow_server_fixture,
)
from rich.console import Console
from typer.testing import CliRunner

from modelpress.operator.backends.local import LocalBackend
from modelpress.operator.controller import Controller, view_of
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import FINALIZER, Config, JobView
from modelpress.operator.scheduling import merged

HERE = Path(__file__).resolve().parent
FAKES = HERE / "operator"
WAIT_SECONDS = 30.0


@pytest.fixture(autouse=True)
def _workers_import_the_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(FAKES), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(FAKES))


@pytest.fixture
def model_name() -> str:
    """A registered model of namespace ml that no other test touches."""
    return f"ml.fraud-{uuid.uuid4().hex[:8]}"


def _events(type_: str, reason: str, message: str) -> None:
    """Events are not what these tests look at."""


def _controller(tmp_path: Path) -> Controller:
    root = tmp_path.as_uri()
    config = Config(default_output=f"{root}/output/{{namespace}}/{{name}}",
                    namespace_prefixes=(f"{root}/output/{{namespace}}/",))
    backend = LocalBackend(tmp_path / "runs", max_runs=2, runner="fake_runners:succeed")
    return Controller(backend, config, OperatorMetrics(), registry_models=("{namespace}.*",))


def _job(uid: str, registry: dict[str, Any], gates: dict[str, Any] | None = None,
         name: str = "digits") -> JobView:
    document = yaml.safe_load((HERE.parents[1] / "examples" / "digits-prune-quantize.yaml")
                              .read_text())
    document["metadata"].update(name=name, namespace="ml", uid=uid, generation=1,
                                finalizers=[FINALIZER])
    document["spec"]["promotion"] = {"gates": gates or {"minCompressionRatio": 3.0},
                                     "registry": registry}
    return view_of(document)


def _synced(controller: Controller, view: JobView) -> JobView:
    """The job after a sync, as the API server holds it once the status patch is merged."""
    return replace(view, status=merged(view.status, controller.sync(view, _events)),
                   resource_version=str(int(view.resource_version or 0) + 1))


def _finished(controller: Controller, view: JobView) -> JobView:
    """Admitted, run to the end by the backend, then judged (one sync after the run)."""
    view = _synced(controller, view)
    run_id = (view.status or {})["runId"]
    deadline = time.monotonic() + WAIT_SECONDS
    while controller.backend.poll(run_id).phase != "Succeeded":
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.05)
    return _synced(controller, view)


def _edited(view: JobView, promotion: dict[str, Any]) -> JobView:
    spec = {**view.spec, "promotion": promotion}
    return JobView(**{**view.__dict__, "spec": spec, "generation": view.generation + 1})


def _condition(view: JobView) -> dict[str, Any]:
    return next(c for c in (view.status or {})["conditions"] if c["type"] == "Promoted")


def _versions(server: MlflowServer, model: str) -> list[Any]:
    return MlflowClient(server.uri).search_model_versions(f"name = '{model}'")


def _holder(server: MlflowServer, model: str, alias: str = "challenger") -> str:
    return str(MlflowClient(server.uri).get_model_version_by_alias(model, alias).version)


def test_a_passing_job_becomes_a_version_with_its_figures_and_takes_the_alias(
        tmp_path: Path, mlflow_env: MlflowServer, model_name: str) -> None:
    controller = _controller(tmp_path)
    registry = {"kind": "mlflow", "model": model_name}
    first = _finished(controller, _job("uid-first", registry, name="first"))
    assert (first.status or {})["promotion"]["registry"]["version"] == "1"
    view = _finished(controller, _job("uid-second", registry, name="second"))
    promotion = (view.status or {})["promotion"]
    assert promotion["decision"] == "Promoted", _condition(view)
    registered = promotion["registry"]
    assert (registered["version"], registered["previousVersion"]) == ("2", "1")
    assert registered["uri"] == f"models:/{model_name}/2"
    assert _holder(mlflow_env, model_name) == "2"
    assert "version 2" in _condition(view)["message"]
    version = MlflowClient(mlflow_env.uri).get_model_version(model_name, "2")
    model = (tmp_path / "output" / "ml" / "second" / "model.onnx").read_bytes()
    assert version.tags["modelpress.model_sha256"] == hashlib.sha256(model).hexdigest()
    assert version.tags["modelpress.job_key"] == "uid-second"
    assert version.tags["modelpress.compression_ratio"] == "4"
    assert version.tags["modelpress.accuracy_drop"] == "0.002"
    assert version.tags["modelpress.speedup.cpu"] == "1.8"
    assert version.tags["modelpress.results_sha256"] == promotion["sha256"]["results.json"]
    assert version.source == f"runs:/{registered['runId']}/model"
    stored = MlflowClient(mlflow_env.uri).download_artifacts(registered["runId"], "model",
                                                             str(tmp_path))
    assert (Path(stored) / "model.onnx").read_bytes() == model


def test_a_failing_job_moves_no_alias_and_a_re_judgement_moves_it_without_a_new_run(
        tmp_path: Path, mlflow_env: MlflowServer, model_name: str) -> None:
    controller = _controller(tmp_path)
    registry = {"model": model_name}
    _finished(controller, _job("uid-holder", registry, name="holder"))
    view = _finished(controller, _job("uid-strict", registry, {"minCompressionRatio": 10.0},
                                      name="strict"))
    assert (view.status or {})["promotion"]["decision"] == "Rejected"
    assert "registry" not in (view.status or {})["promotion"]
    assert len(_versions(mlflow_env, model_name)) == 1  # a rejected job leaves no version
    assert _holder(mlflow_env, model_name) == "1"
    run_id = (view.status or {})["runId"]
    view = _synced(controller, _edited(view, {"gates": {"minCompressionRatio": 3.0},
                                              "registry": registry}))
    promotion = (view.status or {})["promotion"]
    assert promotion["decision"] == "Promoted"
    assert (promotion["registry"]["version"], promotion["registry"]["previousVersion"]) == (
        "2", "1")
    assert _holder(mlflow_env, model_name) == "2"
    assert (view.status or {})["runId"] == run_id
    assert len(list((tmp_path / "runs").iterdir())) == 2  # one run per job, none re-run
    champion = _synced(controller, _edited(view, {"registry": {**registry,
                                                               "alias": "champion"}}))
    assert (champion.status or {})["promotion"]["registry"]["alias"] == "champion"
    assert _holder(mlflow_env, model_name, "champion") == "2"
    assert len(_versions(mlflow_env, model_name)) == 2


def test_a_registry_outage_ends_cleanly_and_the_retry_makes_no_second_version(
        tmp_path: Path, mlflow_env: MlflowServer, model_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    controller = _controller(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    view = _finished(controller, _job("uid-outage", {"model": model_name}))
    assert (view.status or {})["phase"] == "Succeeded"
    assert (view.status or {})["promotion"]["decision"] == "Pending"
    condition = _condition(view)
    assert condition["reason"] == "RegistryUnavailable"
    assert "will retry" in condition["message"] and "\n" not in condition["message"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_env.uri)
    view = _synced(controller, view)
    assert (view.status or {})["promotion"]["decision"] == "Promoted"
    assert _condition(view)["reason"] == "Promoted"
    # The status write of that success is lost (the operator died): the next try finds the
    # version it made, and the previous holder it recorded there.
    lost = {**(view.status or {}), "promotion": {**(view.status or {})["promotion"],
                                                 "decision": "Pending"}}
    again = _synced(controller, JobView(**{**view.__dict__, "status": lost}))
    assert (again.status or {})["promotion"]["registry"] == (view.status or {})["promotion"][
        "registry"]
    assert len(_versions(mlflow_env, model_name)) == 1


def test_a_registered_model_of_another_namespace_is_refused(
        tmp_path: Path, mlflow_env: MlflowServer) -> None:
    other = f"other.fraud-{uuid.uuid4().hex[:8]}"
    view = _finished(_controller(tmp_path), _job("uid-scope", {"model": other}))
    assert (view.status or {})["promotion"]["decision"] == "Rejected"
    condition = _condition(view)
    assert condition["reason"] == "RegistryRefused"
    assert condition["message"].startswith(f"spec.promotion.registry.model: {other} is not")
    assert _versions(mlflow_env, other) == []


def test_no_tracking_uri_rejects_the_promotion_naming_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    view = _finished(_controller(tmp_path), _job("uid-unset", {"model": "ml.fraud"}))
    condition = _condition(view)
    assert (view.status or {})["promotion"]["decision"] == "Rejected"
    assert condition["reason"] == "RegistryRefused" and "MLFLOW_TRACKING_URI" in \
        condition["message"]


# ------------------------------------------------------------------------ the CLI


def _cli_job(tmp_path: Path, registry: dict[str, Any], gates: dict[str, Any]) -> Path:
    document = yaml.safe_load((HERE.parents[1] / "examples" / "digits-prune-quantize.yaml")
                              .read_text())
    document["metadata"] = {"name": "digits"}
    document["spec"]["promotion"] = {"gates": gates, "registry": registry}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    said: str  # what the CLI's console wrote (its stderr)
    stdout: str


def _modelpress_run(job: Path, output: Path, monkeypatch: pytest.MonkeyPatch) -> CliResult:
    """`modelpress run` in this process, its pipeline the fake run."""
    import fake_runners

    from modelpress import cli
    from modelpress.pipelines import local

    said = io.StringIO()
    monkeypatch.setattr(local, "run_local", fake_runners.succeed)
    monkeypatch.setattr(cli, "console", Console(file=said, width=300))
    result = CliRunner().invoke(cli.app, ["run", str(job), "--output", str(output)])
    return CliResult(result.exit_code, said.getvalue(), result.stdout)


def test_modelpress_run_registers_and_writes_the_version_into_results_json(
        tmp_path: Path, mlflow_env: MlflowServer, model_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    job = _cli_job(tmp_path, {"model": model_name}, {"minCompressionRatio": 3.0})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    down = _modelpress_run(job, tmp_path / "out", monkeypatch)
    assert down.exit_code == 1, down.said
    assert "registry:" in down.said and "run again to retry" in down.said
    assert "registry" not in json.loads((tmp_path / "out" / "results.json").read_text())[
        "results"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_env.uri)
    first = _modelpress_run(job, tmp_path / "out", monkeypatch)
    second = _modelpress_run(job, tmp_path / "out", monkeypatch)
    assert (first.exit_code, second.exit_code) == (0, 0), first.said + second.said
    assert f"registry: models:/{model_name}/1 is @challenger" in first.said
    assert json.loads(first.stdout.splitlines()[-1])["registry"]["version"] == "1"
    written = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert written["registry"]["version"] == "1"
    assert written["registry"]["alias"] == "challenger"
    assert "previousVersion" not in written["registry"]  # the alias was unset
    assert len(_versions(mlflow_env, model_name)) == 1  # the same model: the same version
    assert _versions(mlflow_env, model_name)[0].tags["modelpress.job_key"] == "default/digits"


def test_modelpress_run_with_failing_gates_registers_nothing(
        tmp_path: Path, mlflow_env: MlflowServer, model_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    job = _cli_job(tmp_path, {"model": model_name}, {"minCompressionRatio": 10.0})
    result = _modelpress_run(job, tmp_path / "out", monkeypatch)
    assert result.exit_code == 3, result.said
    assert "nothing registered" in result.said
    assert _versions(mlflow_env, model_name) == []


def test_modelpress_run_without_a_tracking_uri_exits_2_before_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = _cli_job(tmp_path, {"model": "ml.fraud"}, {})
    result = _modelpress_run(job, tmp_path / "out", monkeypatch)
    said = result.said.strip().splitlines()
    assert result.exit_code == 2
    assert len(said) == 1 and "MLFLOW_TRACKING_URI" in said[0]
    assert not (tmp_path / "out").exists()
