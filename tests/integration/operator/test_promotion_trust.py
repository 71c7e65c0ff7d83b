"""A tenant rewrites the job's output after its run, before the operator promotes it.

The local backend's worker runs a fake pipeline (fake_runners.succeed) and records what it
published in the run folder; the controller reads and copies with the real reader and
copier. What the tenant planted in the output is never promoted, and the job says why.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from modelpress.operator.backends.local import LocalBackend
from modelpress.operator.controller import Controller, view_of
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import FINALIZER, Config, JobView
from modelpress.operator.scheduling import merged

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
WAIT_SECONDS = 30.0


def _events(type_: str, reason: str, message: str) -> None:
    """Events are not what these tests look at."""


def _controller(tmp_path: Path) -> Controller:
    root = tmp_path.as_uri()
    config = Config(default_output=f"{root}/output/{{namespace}}/{{name}}",
                    namespace_prefixes=(f"{root}/output/{{namespace}}/",
                                        f"{root}/models/{{namespace}}/"))
    backend = LocalBackend(tmp_path / "runs", max_runs=2, runner="fake_runners:succeed")
    return Controller(backend, config, OperatorMetrics())


def _job(tmp_path: Path) -> JobView:
    document = yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())
    document["metadata"].update(name="digits", namespace="ml", uid="uid-1", generation=1,
                                finalizers=[FINALIZER])
    document["spec"]["promotion"] = {"target": f"{tmp_path.as_uri()}/models/ml/prod"}
    return view_of(document)


def _until_finished(controller: Controller, view: JobView) -> JobView:
    """Sync until the run has ended in the backend (the job not yet judged)."""
    view = _synced(controller, view)  # admitted: the run starts
    run_id = (view.status or {})["runId"]
    deadline = time.monotonic() + WAIT_SECONDS
    while controller.backend.poll(run_id).phase != "Succeeded":
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.05)
    return view


def _synced(controller: Controller, view: JobView) -> JobView:
    """The job after a sync, as the API server holds it once the status patch is merged."""
    return replace(view, status=merged(view.status, controller.sync(view, _events)),
                   resource_version=str(int(view.resource_version or 0) + 1))


def _promoted_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Promoted")


def test_the_runs_own_model_is_promoted_with_its_digest(tmp_path: Path) -> None:
    controller = _controller(tmp_path)
    view = _synced(controller, _until_finished(controller, _job(tmp_path)))
    status = view.status or {}
    model = (tmp_path / "output" / "ml" / "digits" / "model.onnx").read_bytes()
    assert status["promotion"]["decision"] == "Promoted", status
    assert status["promotion"]["modelSha256"] == hashlib.sha256(model).hexdigest()
    assert (tmp_path / "models" / "ml" / "prod" / "model.onnx").read_bytes() == model


def test_a_model_overwritten_after_the_run_is_not_promoted(tmp_path: Path) -> None:
    controller = _controller(tmp_path)
    view = _until_finished(controller, _job(tmp_path))
    output = tmp_path / "output" / "ml" / "digits"
    recorded = hashlib.sha256((output / "model.onnx").read_bytes()).hexdigest()
    (output / "model.onnx").write_bytes(b"a model the tenant planted")
    planted = hashlib.sha256(b"a model the tenant planted").hexdigest()
    status = _synced(controller, view).status or {}
    assert status["phase"] == "Succeeded"
    assert status["promotion"]["decision"] == "Rejected"
    condition = _promoted_condition(status)
    assert condition["reason"] == "DigestMismatch"
    assert planted in condition["message"] and recorded in condition["message"]
    assert not (tmp_path / "models" / "ml" / "prod").exists()


def test_a_forged_results_json_is_refused(tmp_path: Path) -> None:
    controller = _controller(tmp_path)
    view = _until_finished(controller, _job(tmp_path))
    output = tmp_path / "output" / "ml" / "digits"
    (tmp_path / "elsewhere.onnx").write_bytes(b"another model")
    forged = json.loads((output / "results.json").read_text())
    forged["results"]["compressionRatio"] = 40.0
    forged["artifacts"]["model"] = (tmp_path / "elsewhere.onnx").as_uri()
    (output / "results.json").write_text(json.dumps(forged))
    status = _synced(controller, view).status or {}
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "ResultsMismatch"
    assert "results.json does not match the run's record" in succeeded["message"]
    assert "results" not in status
    assert not (tmp_path / "models" / "ml" / "prod").exists()
