"""`modelpress operator` options: bad ones fail before anything starts; the backends and the
watched namespace come from the settings and the kubeconfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelpress.errors import InvalidInput
from modelpress.operator.backends.kfp import KfpBackend
from modelpress.operator.backends.local import LocalBackend
from modelpress.operator.config import OperatorSettings
from modelpress.operator.main import current_namespace, make_backend, run_operator


@pytest.mark.parametrize(("backend", "namespace", "all_namespaces", "where"), [
    ("local", "ml", True, "--namespace/--all-namespaces"),
    ("argo", None, False, "--backend"),
])
def test_bad_options_are_invalid_input(backend: str, namespace: str | None,
                                       all_namespaces: bool, where: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        run_operator(backend, namespace, all_namespaces, metrics_port=0)
    assert raised.value.where == where


def test_backends_follow_the_settings(tmp_path: Path) -> None:
    settings = OperatorSettings(local_workdir=tmp_path / "runs", max_runs_in_flight=3,
                                kfp_host="http://kfp.example:8888", kfp_experiment="team")
    local = make_backend("local", settings)
    assert isinstance(local, LocalBackend) and local.max_runs == 3
    kfp = make_backend("kfp", settings)
    assert isinstance(kfp, KfpBackend)
    assert (kfp.host, kfp.experiment, kfp.max_runs) == ("http://kfp.example:8888", "team", 3)


def test_local_runs_run_below_the_operators_priority_unless_told_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = OperatorSettings(local_workdir=tmp_path / "runs")
    assert make_backend("local", settings).worker_niceness == 10  # type: ignore[attr-defined]
    monkeypatch.setenv("MODELPRESS_WORKER_NICENESS", "0")
    settings = OperatorSettings(local_workdir=tmp_path / "runs")
    assert make_backend("local", settings).worker_niceness == 0  # type: ignore[attr-defined]
    monkeypatch.setenv("MODELPRESS_WORKER_NICENESS", "20")
    with pytest.raises(ValueError, match="worker_niceness"):
        OperatorSettings()


@pytest.mark.parametrize(("context", "expected"), [
    ({"cluster": "c", "user": "u", "namespace": "ml-team"}, "ml-team"),
    ({"cluster": "c", "user": "u"}, "default"),
])
def test_the_kubeconfig_context_names_the_namespace(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    context: dict[str, str],
                                                    expected: str) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "here", "context": context}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert current_namespace() == expected


def test_the_local_backend_refuses_every_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend runs tenants' jobs inside the operator pod: single-tenant only."""
    monkeypatch.delenv("MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES", raising=False)
    with pytest.raises(InvalidInput) as raised:
        run_operator("local", None, True, metrics_port=0)
    assert raised.value.where == "--backend"
    assert "single-tenant" in raised.value.problem
    assert "MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES=true" in raised.value.problem


def test_the_override_lets_the_local_backend_watch_every_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the override the refusal is gone: what stops the start now is the next check
    (a bad default output, given here so that nothing starts)."""
    monkeypatch.setenv("MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES", "true")
    monkeypatch.setenv("MODELPRESS_DEFAULT_OUTPUT", "s3://elsewhere/{namespace}/{name}/")
    with pytest.raises(InvalidInput) as raised:
        run_operator("local", None, True, metrics_port=0)
    assert raised.value.where == "MODELPRESS_DEFAULT_OUTPUT"
