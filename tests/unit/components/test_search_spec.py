"""Bad search specs: one line naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelpress.api import CompressionJob
from modelpress.jobfile import describe

_PRUNE = "steps[0].prune.sparsity"


def _job(search: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "s"},
            "spec": {"model": {"uri": "builtin://digits-cnn"},
                     "data": {"eval": "builtin://digits"},
                     "steps": [{"prune": {}}, {"quantize": {}}], "search": search}}


@pytest.mark.parametrize(("search", "line"), [
    ({"parameters": [{"parameter": _PRUNE, "low": 0.1, "high": 0.5}]},
     "spec.search: parameters[0]: the grid sampler needs values"),
    ({"sampler": "tpe", "parameters": [{"parameter": _PRUNE, "values": [0.1]}]},
     "spec.search: maxTrials: the tpe sampler needs maxTrials or timeBudgetSeconds"),
    ({"sampler": "tpe", "maxTrials": 3,
      "parameters": [{"parameter": _PRUNE, "low": 0.5, "high": 0.1}]},
     "spec.search.parameters[0]: a range needs low < high"),
    ({"parameters": [{"parameter": _PRUNE, "values": [0.1], "low": 0.1, "high": 0.2}]},
     "spec.search.parameters[0]: give either values or a range"),
    ({"parameter": _PRUNE, "values": [0.1], "parameters": [{"parameter": _PRUNE,
                                                            "values": [0.2]}]},
     "spec.search: give parameter and values, or parameters, not both"),
    ({}, "spec.search: name what to search"),
    ({"parameters": [{"parameter": _PRUNE, "values": [0.1]},
                     {"parameter": _PRUNE, "values": [0.2]}]},
     "spec.search: parameters: each parameter at most once"),
    ({"parameters": [{"parameter": _PRUNE, "values": [0.1]},
                     {"parameter": "steps[3].quantize.mode", "values": ["fp16"]}]},
     "spec.search.parameters[1].parameter: 'steps[3].quantize.mode' names no such step"),
    ({"parameters": [{"parameter": _PRUNE, "values": [0.1, 1.5]}]},
     "spec.search.parameters[0].values[1]: Input should be less than 1"),
    ({"sampler": "tpe", "maxTrials": 2,
      "parameters": [{"parameter": _PRUNE, "low": 0.1, "high": 2.0}]},
     "spec.search.parameters[0].high: Input should be less than 1"),
    ({"maxTrials": 0, "parameter": _PRUNE, "values": [0.1]},
     "spec.search.maxTrials: Input should be greater than or equal to 1"),
    ({"parameters": [{"parameter": "steps[1].quantize.epochs", "values": list(range(1, 30))},
                     {"parameter": "steps[1].quantize.learningRate",
                      "values": [0.001 * i for i in range(1, 30)]},
                     {"parameter": _PRUNE, "values": [0.1, 0.2]}]},
     "spec.search: 1682 combinations of values; at most 1024"),
], ids=["grid-range", "tpe-unbounded", "low-above-high", "values-and-range", "both-shapes",
        "nothing", "duplicate", "no-such-step", "value-out-of-range", "range-out-of-range",
        "max-trials-zero", "too-many"])
def test_a_bad_search_is_one_line_naming_the_field(search: dict[str, Any], line: str) -> None:
    with pytest.raises(ValidationError) as raised:
        CompressionJob.model_validate(_job(search))
    text = describe(raised.value)
    assert "\n" not in text
    assert text.startswith(line), text


def test_the_one_parameter_shorthand_is_still_a_grid() -> None:
    job = CompressionJob.model_validate(_job({"parameter": _PRUNE, "values": [0.3, 0.6]}))
    assert job.spec.search is not None
    assert [p.values for p in job.spec.search.searched] == [[0.3, 0.6]]
    assert job.spec.search.sampler == "grid"
