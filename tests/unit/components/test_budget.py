"""What each lossy step spent of the accuracy budget, as results list it and the report
states it."""

from __future__ import annotations

from modelpress.api import Results
from modelpress.components.budget import honesty_line, spends
from modelpress.records import DecomposeRecord, PruneRecord, QuantizeRecord


def test_each_step_spends_its_share_of_the_cumulative_drop() -> None:
    ledger = [PruneRecord(name="prune", parameters_before=10, parameters=10,
                          nonzero_parameters=5, parameter_reduction=0.5, validation_drop=0.012),
              DecomposeRecord(name="decompose", replaced_layers=1, parameters_before=10,
                              parameters=8),  # measured nothing: left out
              QuantizeRecord(name="quantize", mode="dynamic", size_bytes=1,
                             validation_drop=0.015)]
    assert [(s.step, s.cumulative_drop, s.spent) for s in spends(ledger)] == [
        ("prune", 0.012, 0.012), ("quantize", 0.015, 0.003)]


def test_the_report_line_says_what_decided_what_reported_and_who_spent() -> None:
    figures = {"parameters": 1, "sizeBytes": 1, "metric": {"name": "accuracy", "value": 0.9}}
    results = Results.model_validate({
        "baseline": figures, "compressed": figures, "compressionRatio": 1.0,
        "accuracyDrop": 0.0123, "accuracyDropInterval": [0.004, 0.021],
        "decisionData": {"source": "data.train", "carved": True, "seed": 0, "rows": 287,
                         "evalRows": 360},
        "budget": [{"step": "prune", "cumulativeDrop": 0.01, "spent": 0.01},
                   {"step": "quantize", "cumulativeDrop": 0.009, "spent": -0.001}]})
    assert honesty_line(results) == (
        "accuracy drop 0.0123 (95% interval 0.0040 to 0.0210, paired bootstrap over 360 eval "
        "rows); decisions made on 287 validation rows from a seeded split of data.train "
        "(seed 0), figures reported on 360 eval rows; budget spent on validation: prune "
        "+0.0100, quantize -0.0010.")
