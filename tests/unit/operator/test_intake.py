"""The intake process's decisions, without an API server: which events are a new job's,
and what its first status and Events are."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client
from opfixtures import CONFIG, NOW, job, spec

from modelpress.operator.intake import Intake, KubeSession, brand_new, event_body, first_status
from modelpress.operator.reconcile import FINALIZER


def _body(**metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "namespace": "ml", **metadata}, "spec": spec()}


@pytest.mark.parametrize("event_type", ["ADDED", "MODIFIED"])
def test_a_job_without_a_phase_is_brand_new(event_type: str) -> None:
    assert brand_new(event_type, _body())
    assert brand_new(event_type, {**_body(), "status": {}})


@pytest.mark.parametrize(("event_type", "body"), [
    ("DELETED", _body()),
    ("BOOKMARK", _body()),
    ("MODIFIED", {**_body(), "status": {"phase": "Pending"}}),
    ("MODIFIED", _body(finalizers=[FINALIZER])),  # the operator had it: a lost status
    ("MODIFIED", _body(deletionTimestamp="2025-05-01T12:00:00Z")),
])
def test_other_events_are_not_the_intakes(event_type: str, body: dict[str, Any]) -> None:
    assert not brand_new(event_type, body)


def test_a_valid_job_is_queued_at_the_version_read() -> None:
    first = first_status(replace(job(), resource_version="41"), CONFIG, NOW)
    assert first.patch["phase"] == "Pending" and "runId" not in first.patch
    assert first.patch["observedGeneration"] == 1
    assert [(c["type"], c["reason"]) for c in first.patch["conditions"]][0] == \
        ("Succeeded", "Queued")
    assert [(e.type, e.reason) for e in first.events] == [("Normal", "Queued")]
    assert first.body() == {"metadata": {"resourceVersion": "41"}, "status": first.patch}


def test_an_invalid_job_fails_naming_its_field() -> None:
    bad = spec()
    bad["steps"][0]["prune"]["sparsity"] = 1.5
    first = first_status(job(bad), CONFIG, NOW)
    assert first.patch["phase"] == "Failed"
    [event] = first.events
    assert (event.type, event.reason) == ("Warning", "InvalidSpec")
    assert "sparsity" in event.message


def test_a_job_outside_its_namespace_fails_at_intake() -> None:
    elsewhere = {**spec(), "output": "s3://bucket/other-team/x/"}
    first = first_status(job(elsewhere), CONFIG, NOW)
    assert first.patch["phase"] == "Failed"
    assert first.events[0].message.startswith("spec.output: s3://bucket/other-team/x/ lies "
                                              "outside this namespace's locations")


def test_an_event_names_its_job() -> None:
    first = first_status(job(), CONFIG, NOW)
    body = event_body(first, first.events[0], NOW)
    assert body["involvedObject"] == {
        "apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob", "name": "digits",
        "namespace": "ml", "uid": "uid-1"}
    assert (body["type"], body["reason"]) == ("Normal", "Queued")
    assert body["metadata"] == {"generateName": "digits.", "namespace": "ml"}
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2025-05-01T12:00:00Z"


def test_a_job_that_cannot_be_judged_is_logged_and_left(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    settings = client.Configuration()
    settings.host = "http://127.0.0.1:1"
    intake = Intake(KubeSession(settings), CONFIG, "ml")
    with caplog.at_level(logging.ERROR):
        intake._take({"metadata": {"namespace": "ml"}, "spec": spec()})  # it has no name
    assert "The first status of ml/None could not be made" in caplog.text
    assert "KeyError: 'name'" in caplog.text
