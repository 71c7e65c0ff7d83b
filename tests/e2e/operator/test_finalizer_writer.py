"""The ticker's finalizer write against the API stand-in, through the kubernetes client the
operator uses: put on beside other controllers' finalizers, at the version read (a newer
one is a conflict, not an overwrite), and never on a job that is gone, replaced or being
deleted."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_standin import KubeStandIn
from kubernetes import client

from modelpress.api import API_GROUP, API_VERSION
from modelpress.crd import PLURAL
from modelpress.operator.controller import view_of
from modelpress.operator.reconcile import FINALIZER, JobView
from modelpress.operator.ticker import JobGone, KubeStatusWriter

CRD = Path(__file__).resolve().parents[3] / "charts" / "modelpress" / "crds" / \
    "compressionjobs.yaml"
OTHER = "example.com/keep-me"


@pytest.fixture(scope="module")
def api() -> Iterator[KubeStandIn]:
    standin = KubeStandIn([yaml.safe_load(CRD.read_text())]).start()
    yield standin
    standin.stop()


@pytest.fixture
def objects(api: KubeStandIn) -> Any:
    configuration = client.Configuration()
    configuration.host = api.url
    return client.CustomObjectsApi(client.ApiClient(configuration))


def _created(objects: Any, name: str, finalizers: list[str] | None = None) -> JobView:
    body: dict[str, Any] = {"apiVersion": f"{API_GROUP}/{API_VERSION}",
                            "kind": "CompressionJob",
                            "metadata": {"name": name, "namespace": "default"},
                            "spec": {"model": {"uri": "builtin://digits-cnn"}}}
    if finalizers:
        body["metadata"]["finalizers"] = finalizers
    created = objects.create_namespaced_custom_object(API_GROUP, API_VERSION, "default",
                                                      PLURAL, copy.deepcopy(body))
    return view_of(created)


def _finalizers(objects: Any, name: str) -> list[str]:
    body = objects.get_namespaced_custom_object(API_GROUP, API_VERSION, "default", PLURAL,
                                                name)
    return list(body["metadata"].get("finalizers") or [])


def test_the_finalizer_goes_on_beside_others_and_once(objects: Any) -> None:
    job = _created(objects, "beside", [OTHER])
    writer = KubeStatusWriter(objects)
    assert writer.put_finalizer(job)
    assert writer.put_finalizer(job)  # already on: nothing written
    assert _finalizers(objects, "beside") == [OTHER, FINALIZER]


def test_a_job_without_finalizers_gets_the_list(objects: Any) -> None:
    job = _created(objects, "bare")
    assert KubeStatusWriter(objects).put_finalizer(job)
    assert _finalizers(objects, "bare") == [FINALIZER]


def test_a_patch_at_an_older_version_is_a_conflict(objects: Any) -> None:
    """What put_finalizer relies on: the version it read is a precondition of its write."""
    job = _created(objects, "raced")
    objects.patch_namespaced_custom_object(API_GROUP, API_VERSION, "default", PLURAL,
                                           "raced", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(client.ApiException) as conflict:
        objects.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, "default", PLURAL, "raced",
            {"metadata": {"finalizers": [FINALIZER],
                          "resourceVersion": job.resource_version}})
    assert conflict.value.status == 409
    assert _finalizers(objects, "raced") == []


def test_no_finalizer_on_a_job_gone_replaced_or_being_deleted(objects: Any) -> None:
    writer = KubeStatusWriter(objects)
    with pytest.raises(JobGone):
        writer.put_finalizer(replace(_created(objects, "x"), name="never-created"))
    with pytest.raises(JobGone):  # the same name, another job
        writer.put_finalizer(replace(_created(objects, "renamed"), uid="an-older-uid"))
    deleting = _created(objects, "deleting", [OTHER])
    objects.delete_namespaced_custom_object(API_GROUP, API_VERSION, "default", PLURAL,
                                            "deleting")
    with pytest.raises(JobGone):
        writer.put_finalizer(deleting)
    assert _finalizers(objects, "deleting") == [OTHER]
