"""The Kubeflow Pipelines backend: runs on a KFP v2beta1 API through kfp.Client.

Every call gets a timeout and is retried with exponential backoff on 5xx answers,
timeouts and refused connections; 4xx answers are not retried. When the API stays
unreachable the error says where it looked and what it got. Runs are named after the
job's uid, so a create whose answer was lost is found again instead of repeated.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import urllib3
from kfp_server_api.exceptions import ApiException

from modelpress.api import DEFAULT_PLATFORM_STORAGE_SECRET, CompressionSpec, StepStatus
from modelpress.operator.backends.base import (
    BackendError,
    RunPhase,
    RunRequest,
    RunState,
    VerificationRequest,
)
from modelpress.pipelines.build import (
    compile_pipeline,
    compile_verification_pipeline,
    run_deadline,
)
from modelpress.pipelines.steps import is_step_name

T = TypeVar("T")

_PHASES: dict[str, RunPhase] = {
    "RUNTIME_STATE_UNSPECIFIED": "Pending", "PENDING": "Pending", "RUNNING": "Running",
    "PAUSED": "Running", "CANCELING": "Running", "SUCCEEDED": "Succeeded",
    "SKIPPED": "Succeeded", "FAILED": "Failed", "CANCELED": "Canceled"}
_STEP_PHASES = {"PENDING": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded",
                "SKIPPED": "Skipped", "FAILED": "Failed", "CANCELED": "Failed",
                "CANCELING": "Running"}
_IN_FLIGHT = {"RUNTIME_STATE_UNSPECIFIED", "PENDING", "RUNNING", "PAUSED", "CANCELING"}
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_CAPACITY_PAGE = 200


class KfpBackend:
    name: Literal["kfp"] = "kfp"

    def __init__(self, host: str, *, experiment: str = "modelpress",
                 namespace: str | None = None, pipeline_root: str | None = None,
                 max_runs: int = 10, timeout_seconds: float = 30.0, attempts: int = 4,
                 backoff_seconds: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 token_path: Path | None = None, trust_model_code: bool = False,
                 max_deadline_seconds: int | None = None, verify_namespace: str | None = None,
                 verify_secret_name: str = DEFAULT_PLATFORM_STORAGE_SECRET) -> None:
        self.host = host
        # Where verification runs execute (MODELPRESS_VERIFY_NAMESPACE, default the KFP
        # namespace): the platform's own, whose Secret `verify_secret_name` no tenant can name.
        self.verify_namespace = verify_namespace or namespace
        self.verify_secret_name = verify_secret_name
        self.experiment = experiment
        self.namespace = namespace
        self.pipeline_root = pipeline_root
        self.max_runs = max_runs
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self.token_path = token_path
        self.trust_model_code = trust_model_code  # the operator's MODELPRESS_TRUST_MODEL_CODE
        self.max_deadline_seconds = max_deadline_seconds  # MODELPRESS_MAX_DEADLINE_SECONDS
        self._client: Any = None
        self._experiment_ids: dict[str | None, str] = {}  # by the namespace runs land in

    # ------------------------------------------------------------------ Backend protocol

    def submit(self, request: RunRequest) -> str:
        root = self.pipeline_root or request.output.rstrip("/") + "/pipeline-root"

        def compile_into(package: str, deadline: int | None) -> None:
            compile_pipeline(request.job, request.output, package,
                             trust_model_code=self.trust_model_code, deadline_seconds=deadline)

        return self._start(run_name(request), self._run_namespace(request), root,
                           request.job.spec, compile_into)

    def submit_verification(self, request: VerificationRequest) -> str:
        """Start the run that re-measures a job's staged model, in the platform's namespace
        with the platform's storage Secret (operator.verify). InvalidInput when the job's
        model is a program, which the platform never runs."""
        meta = request.job.metadata
        root = request.output.rstrip("/") + "/pipeline-root"

        def compile_into(package: str, deadline: int | None) -> None:
            compile_verification_pipeline(request.job, request.candidate, request.output,
                                          package, secret_name=self.verify_secret_name,
                                          deadline_seconds=deadline)

        return self._start(f"verify {meta.namespace}/{meta.name} ({request.key})",
                           self.verify_namespace, root, request.job.spec, compile_into)

    def _start(self, name: str, namespace: str | None, root: str, spec: CompressionSpec,
               compile_into: Callable[[str, int | None], None]) -> str:
        """The run `name` in `namespace`: the one already started (a create whose answer was
        lost), else a new run of the pipeline `compile_into` writes (given the package path
        and the operator's deadline for the job's tasks)."""
        existing = self._find_run(name, namespace)
        if existing:
            return existing
        deadline = run_deadline(spec, self.max_deadline_seconds) \
            if self.max_deadline_seconds else None
        with tempfile.TemporaryDirectory(prefix="modelpress-kfp-") as scratch:
            package = str(Path(scratch) / "pipeline.yaml")
            compile_into(package, deadline)
            return self._create_run(name, package, root, namespace)

    def poll(self, run_id: str) -> RunState:
        try:
            run = self._call("get run", lambda: self._kfp().get_run(run_id))
        except _NotFound:
            return RunState(run_id=run_id, phase="Lost")
        return run_state(run)

    def terminate(self, run_id: str) -> None:
        try:
            self._call("terminate run", lambda: self._kfp().terminate_run(run_id))
        except _NotFound:
            pass  # nothing left to stop

    def has_capacity(self) -> bool:
        return len(self._runs_in_flight()) < self.max_runs

    def runs_in_namespace(self, namespace: str) -> int:
        """Counted by the run's display name, which starts with the job's namespace."""
        experiments = [self._experiment(namespace)] if self.namespace else None
        return sum(1 for run in self._runs_in_flight(experiments)
                   if str(run.display_name or "").startswith(f"{namespace}/"))

    # ------------------------------------------------------------------------- internals

    def _run_namespace(self, request: RunRequest) -> str | None:
        """Where a job's run executes. A multi-user KFP (MODELPRESS_KFP_NAMESPACE set) runs
        it in the job's own namespace, its Kubeflow profile: there its storage Secret is
        looked up, so no job reads another namespace's credentials. A single-user KFP
        runs every job in its own namespace (None: the client's default)."""
        return request.job.metadata.namespace if self.namespace else None

    def _runs_in_flight(self, experiment_ids: list[str] | None = None) -> list[Any]:
        """Runs in flight in `experiment_ids`; default: every experiment this backend has
        used (on a multi-user KFP one per namespace, learnt as jobs are counted or run)."""
        chosen = experiment_ids or list(self._experiment_ids.values()) or [self._experiment()]
        return [run for experiment_id in chosen for run in self._in_flight(experiment_id)]

    def _in_flight(self, experiment_id: str) -> list[Any]:
        listed = self._call("list runs", lambda: self._kfp().list_runs(
            experiment_id=experiment_id, page_size=_CAPACITY_PAGE, sort_by="created_at desc"))
        return [run for run in listed.runs or [] if str(run.state) in _IN_FLIGHT]

    def _create_run(self, name: str, package: str, root: str, namespace: str | None) -> str:
        """Create the run in `namespace`'s experiment; after a failed attempt, look for it
        before trying again (the server may have created it though the answer never came)."""
        experiment_id = self._experiment(namespace)
        for attempt in range(self.attempts):
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # kfp prints a UI link
                    run = self._kfp().run_pipeline(experiment_id=experiment_id, job_name=name,
                                                   pipeline_package_path=package,
                                                   pipeline_root=root)
                return str(run.run_id)
            except Exception as error:
                if not _retryable(error) or attempt == self.attempts - 1:
                    raise self._error("create run", error) from None
            self._sleep(self._delay(attempt))
            existing = self._find_run(name, namespace)
            if existing:
                return existing
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _find_run(self, name: str, namespace: str | None) -> str | None:
        predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
        experiment_id = self._experiment(namespace)
        listed = self._call("list runs", lambda: self._kfp().list_runs(
            experiment_id=experiment_id, page_size=1,
            filter=json.dumps({"predicates": [predicate]})))
        runs = [run for run in listed.runs or [] if run.display_name == name]
        return str(runs[0].run_id) if runs else None

    def _experiment(self, namespace: str | None = None) -> str:
        """The id of the experiment `namespace`'s runs go into (default: the configured
        MODELPRESS_KFP_NAMESPACE); a multi-user KFP runs an experiment's runs in its
        namespace."""
        where = namespace or self.namespace
        if where not in self._experiment_ids:
            with contextlib.redirect_stdout(io.StringIO()):
                found = self._call("get or create experiment", lambda: self._kfp()
                                   .create_experiment(self.experiment, namespace=where))
            self._experiment_ids[where] = str(found.experiment_id)
        return self._experiment_ids[where]

    def _kfp(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        """A kfp.Client, after our own health check: the client's constructor checks
        health itself with neither a timeout nor a useful error."""
        import kfp
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        self._call("health check", self._healthz)
        # Read again for every request: the kubelet rotates a projected token in place.
        credentials = ServiceAccountTokenVolumeCredentials(str(self.token_path)) \
            if self.token_path else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2…"
            client = kfp.Client(host=self.host, namespace=self.namespace or "kubeflow",
                                credentials=credentials)
        _bound_requests(client, self.timeout_seconds)
        return client

    def _healthz(self) -> None:
        http = urllib3.PoolManager(retries=False, timeout=self.timeout_seconds)
        response = http.request("GET", f"{self.host.rstrip('/')}/apis/v2beta1/healthz",
                                headers=self._authorization())
        if response.status >= 300:
            raise ApiException(status=response.status, reason=response.reason)

    def _authorization(self) -> dict[str, str]:
        """The bearer token of MODELPRESS_KFP_TOKEN_PATH (a multi-user KFP wants one)."""
        if self.token_path is None:
            return {}
        try:
            token = self.token_path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise BackendError(f"the KFP token file {self.token_path} cannot be read: "
                               f"{error.strerror or type(error).__name__}") from None
        return {"Authorization": f"Bearer {token}"}

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return operation()
            except BackendError:
                raise  # already says what is wrong, and no retry mends it
            except Exception as error:
                if isinstance(error, ApiException) and error.status == 404:
                    raise _NotFound(what) from None
                if not _retryable(error) or attempt == self.attempts - 1:
                    raise self._error(what, error) from None
            self._sleep(self._delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay(self, attempt: int) -> float:
        return min(self.backoff_seconds * 2**attempt, 30.0)

    def _error(self, what: str, error: Exception) -> BackendError:
        where = self.host
        if isinstance(error, ApiException):
            detail = f"HTTP {error.status} {error.reason or ''}".strip()
            if not _retryable(error):
                return BackendError(f"{what} at {where} was refused: {detail}")
        else:
            detail = _network_reason(error)
        return BackendError(f"{what}: the KFP API at {where} is unreachable after "
                            f"{self.attempts} attempt(s): {detail}")


class _NotFound(Exception):
    """The API answered 404."""


def run_name(request: RunRequest) -> str:
    """The run's display name: the job, and its uid (what makes submission idempotent)."""
    meta = request.job.metadata
    return f"{meta.namespace}/{meta.name} ({request.key})"


def _retryable(error: Exception) -> bool:
    if isinstance(error, ApiException):
        return error.status is None or error.status == 0 or error.status >= 500 \
            or error.status == 429
    return isinstance(error, _NETWORK_ERRORS)


def _network_reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError) or "timed out" in text:
        return f"timed out ({text})"
    return f"{type(reason).__name__}: {text}"


def _bound_requests(client: Any, timeout_seconds: float) -> None:
    """Give every REST call of `client` a (connect, read) timeout and no hidden retries.

    kfp.Client never passes a timeout, so a server that accepts a connection and then
    stalls would block the operator's handler forever; and urllib3's default retries would
    multiply every timeout behind this backend's own backoff. All the client's generated
    APIs share one ApiClient, whose REST client is adjusted here.
    """
    rest = client._run_api.api_client.rest_client
    rest.pool_manager.connection_pool_kw["retries"] = False
    rest.pool_manager.clear()  # pools opened by the constructor's health check
    unbounded = rest.request

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return unbounded(*args, _request_timeout=_request_timeout
                         or (timeout_seconds, timeout_seconds), **kwargs)

    rest.request = request


def run_state(run: Any) -> RunState:
    """A RunState from a kfp_server_api V2beta1Run."""
    state = str(run.state or "RUNTIME_STATE_UNSPECIFIED")
    tasks = [task for task in (run.run_details.task_details or [] if run.run_details else [])
             if task.display_name and is_step_name(task.display_name)]
    tasks.sort(key=lambda task: _utc(task.start_time) or datetime.max.replace(tzinfo=UTC))
    steps = [_step(task) for task in tasks]
    failed = next((task for task in tasks if str(task.state) == "FAILED"), None)
    message = _message(failed.error) if failed else None
    if state == "FAILED" and not message:
        message = _message(run.error)
    return RunState(run_id=str(run.run_id), phase=_PHASES.get(state, "Pending"), steps=steps,
                    failed_step=failed.display_name if failed else None,
                    message=message, started_at=_utc(run.scheduled_at or run.created_at),
                    finished_at=_utc(run.finished_at) if state in ("SUCCEEDED", "FAILED",
                                                                    "CANCELED") else None)


def _step(task: Any) -> StepStatus:
    started, ended = _utc(task.start_time), _utc(task.end_time)
    duration = (ended - started).total_seconds() if started and ended else None
    return StepStatus(name=task.display_name,
                      phase=_STEP_PHASES.get(str(task.state), "Pending"),  # type: ignore[arg-type]
                      started_at=started, finished_at=ended, duration_seconds=duration,
                      message=_message(task.error))


def _message(error: Any) -> str | None:
    return getattr(error, "message", None) or None


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.year < 1971:  # the API sends the epoch for "not yet"
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
