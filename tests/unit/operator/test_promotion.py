"""The promotion gate, every outcome; the copy to the target; the KServe canary patch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opfixtures import results

from modelpress.api import Promotion
from modelpress.errors import StoreError
from modelpress.gates import condition_error, judge
from modelpress.operator.kserve import rollout_change
from modelpress.operator.promotion import CanaryStep, copy_to_target, promoted_files
from modelpress.store import sha256_of

GPU_DOWN = [{"pool": "gpu", "device": "cuda", "available": False,
             "reason": "no CUDA device on this node"}]

GATES = [
    # id, promotion, results kwargs, decision, fragments expected in the reasons
    pytest.param({}, {}, "Promoted", ["no gates configured"], id="no-gates"),
    pytest.param({"gates": {"minCompressionRatio": 3.5}}, {"ratio": 4.0}, "Promoted",
                 ["compressionRatio 4 >= 3.5"], id="ratio-pass"),
    pytest.param({"gates": {"minCompressionRatio": 3.5}}, {"ratio": 3.49}, "Rejected",
                 ["compressionRatio 3.49 is below minCompressionRatio 3.5"], id="ratio-fail"),
    pytest.param({"gates": {"maxAccuracyDrop": 0.01}}, {"drop": 0.01}, "Promoted",
                 ["accuracyDrop 0.01 <= 0.01"], id="drop-at-limit-passes"),
    pytest.param({"gates": {"maxAccuracyDrop": 0.01}}, {"drop": 0.02}, "Rejected",
                 ["accuracyDrop 0.02 is above maxAccuracyDrop 0.01"], id="drop-fail"),
    pytest.param({"gates": {"minSpeedup": {"cpu": 1.5}}}, {"speedup": {"cpu": 1.8}},
                 "Promoted", ["speedup on pool cpu 1.8 >= 1.5"], id="speedup-pass"),
    pytest.param({"gates": {"minSpeedup": {"cpu": 1.5}}}, {"speedup": {"cpu": 1.2}},
                 "Rejected", ["speedup on pool cpu 1.2 is below minSpeedup 1.5"],
                 id="speedup-fail"),
    pytest.param({"gates": {"minSpeedup": {"gpu": 1.3}}},
                 {"speedup": {"cpu": 2.0}, "benchmarks": GPU_DOWN}, "Rejected",
                 ["minSpeedup 1.3 on pool gpu: the pool was unavailable "
                  "(no CUDA device on this node)"], id="unavailable-pool-fails-speedup"),
    pytest.param({"gates": {"minSpeedup": {"tpu": 1.1}}}, {}, "Rejected",
                 ["minSpeedup 1.1 on pool tpu: no such pool was benchmarked"],
                 id="unknown-pool-fails-speedup"),
    pytest.param({"condition": "results.speedup.cpu >= 1.5 || "
                               "results.compressionRatio >= 6.0"},
                 {"speedup": {"cpu": 1.0}, "ratio": 7.0}, "Promoted",
                 ["is true"], id="cel-true"),
    pytest.param({"condition": "results.compressionRatio >= 6.0"}, {"ratio": 4.0},
                 "Rejected", ["condition 'results.compressionRatio >= 6.0' is false"],
                 id="cel-false"),
    pytest.param({"condition": "results.speedup.gpu > 1.0"}, {}, "Rejected",
                 ["could not be evaluated", "gpu"], id="cel-missing-field"),
    pytest.param({"condition": "results.compressionRatio"}, {}, "Rejected",
                 ["must be true or false"], id="cel-not-boolean"),
    pytest.param({"gates": {"minCompressionRatio": 10, "maxAccuracyDrop": 0.001,
                            "minSpeedup": {"cpu": 5}},
                  "condition": "results.accuracyDrop == 0.0"}, {}, "Rejected",
                 ["minCompressionRatio", "maxAccuracyDrop", "minSpeedup", "is false"],
                 id="every-failure-listed"),
]


@pytest.mark.parametrize(("promotion", "figures", "decision", "fragments"), GATES)
def test_gates(promotion: dict[str, Any], figures: dict[str, Any], decision: str,
               fragments: list[str]) -> None:
    verdict = judge(results(**figures), Promotion.model_validate(promotion))
    assert verdict.decision == decision
    text = " | ".join(verdict.reasons)
    for fragment in fragments:
        assert fragment in text


def test_every_failure_is_its_own_reason() -> None:
    promotion = Promotion.model_validate({"gates": {"minCompressionRatio": 10,
                                                    "maxAccuracyDrop": 0.001,
                                                    "minSpeedup": {"cpu": 5, "gpu": 1}},
                                          "condition": "false"})
    assert len(judge(results(), promotion).reasons) == 5


@pytest.mark.parametrize(("condition", "valid"), [
    ("results.speedup.cpu >= 1.5 || results.compressionRatio >= 6.0", True),
    ("has(results.speedup.gpu)", True),
    ("results.compressionRatio >=", False),
    ("results..x", False),
])
def test_condition_syntax(condition: str, valid: bool) -> None:
    problem = condition_error(condition)
    assert (problem is None) == valid
    if not valid:
        assert problem is not None and problem.startswith("not a valid CEL expression")


# What a run publishes for a Hugging Face model: the model, its preprocessing files, the
# evidence, and the baseline (which is not promoted).
PUBLISHED = ("model.onnx", "tokenizer.json", "config.json", "results.json", "report.html",
             "lineage.json", "baseline.onnx")
PROMOTED = tuple(name for name in PUBLISHED if name != "baseline.onnx")


def test_a_language_models_baseline_folder_is_not_promoted() -> None:
    recorded = dict.fromkeys(["model.onnx.data", "genai_config.json", "model.onnx",
                              "baseline/model.onnx", "baseline/genai_config.json",
                              "baseline.onnx"], "0" * 64)
    assert promoted_files(recorded) == ["model.onnx", "genai_config.json", "model.onnx.data"]


def _output(tmp_path: Path, files: tuple[str, ...] = PUBLISHED) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    for name in files:
        (folder / name).write_text(json.dumps({"file": name}))
    return folder


def test_copy_to_target_copies_every_published_file_but_the_baseline(tmp_path: Path) -> None:
    output = _output(tmp_path)
    target = tmp_path / "production"
    copy_to_target(output.as_uri(), target.as_uri(),
                   {name: sha256_of(output / name) for name in PUBLISHED})
    assert sorted(p.name for p in target.iterdir()) == sorted(PROMOTED)
    assert json.loads((target / "model.onnx").read_text()) == {"file": "model.onnx"}


def test_copy_without_a_model_fails_and_copies_nothing(tmp_path: Path) -> None:
    output = _output(tmp_path, ("results.json",))
    target = tmp_path / "production"
    with pytest.raises(StoreError, match="model.onnx"):
        copy_to_target(output.as_uri(), target.as_uri(),
                       {"model.onnx": "0" * 64,
                        "results.json": sha256_of(output / "results.json")})
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize(("predictor", "block"), [
    ({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://old"}}, "model"),
    ({"onnx": {"storageUri": "s3://old"}}, "onnx"),
    ({}, "model"),
])
def test_the_inference_service_gets_a_canary_not_an_in_place_patch(
        predictor: dict[str, Any], block: str) -> None:
    """The new storageUri goes out with canaryTrafficPercent (KServe keeps the revision that
    served all traffic as the stable one), in whichever block holds the storageUri."""
    service = {"metadata": {"name": "digits"}, "spec": {"predictor": predictor}}
    step = CanaryStep(output="s3://out/", target="s3://models/digits/prod",
                      inference_service="digits", uri="s3://models/digits/prod", percent=20)
    change = rollout_change(service, step, "serving/digits-int8")
    assert change.patch == {
        "metadata": {"annotations": {"modelpress.io/promotion": "serving/digits-int8"}},
        "spec": {"predictor": {block: {"storageUri": "s3://models/digits/prod"},
                               "canaryTrafficPercent": 20}}}
    assert change.stable_uri == predictor.get(block, {}).get("storageUri")
