"""The `modelpress` command. Rooms are imported lazily so `modelpress crd` starts fast.

Exit codes: 0 done (gates passed, or none set), 1 a step failed, 2 bad input (one line naming
the field or file), 3 the job's promotion gates failed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelpress.errors import InvalidInput, ModelpressError, one_line

if TYPE_CHECKING:
    from modelpress.api import CompressionJob, Results
    from modelpress.gates import Verdict
    from modelpress.records import ReportRecord, ResultsDocument

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compress trained models and prove they are still good enough to ship.")
# Bound to the real stderr now: run_local redirects sys.stderr to capture kfp.local's log.
console = Console(file=sys.stderr)
JobArgument = Annotated[Path, typer.Argument(help="A CompressionJob YAML file.")]
TrustOption = Annotated[bool, typer.Option(
    "--trust-model-code", help="Accept model formats that are programs: .pt2, TorchScript, "
    "python:// architectures and students, Hugging Face folders with custom code. They run "
    "code when loaded; trust the job's author.")]


def _fail(error: ModelpressError) -> None:
    code = 2 if isinstance(error, InvalidInput) else 1
    console.print("[red]error:[/red]", escape(one_line(str(error))), highlight=False,
                  soft_wrap=True)
    raise typer.Exit(code)


def _guarded(action: Callable[[], Any]) -> Any:
    """Run `action`; user errors become one red line and the right exit code."""
    try:
        return action()
    except ModelpressError as error:
        _fail(error)


@app.command()
def crd() -> None:
    """Print the CompressionJob CustomResourceDefinition generated from the models."""
    from modelpress.crd import render_crd

    sys.stdout.write(render_crd())


@app.command("compile")
def compile_job(job_file: JobArgument,
                output: Annotated[Path, typer.Option("-o", "--output", help="IR YAML to write.")],
                artifacts: Annotated[str, typer.Option(help="Where the run publishes results.")]
                = "", trust_model_code: TrustOption = False) -> None:
    """Write the Kubeflow Pipelines IR for a job."""
    from modelpress.jobfile import load_job
    from modelpress.outputs import check_uri
    from modelpress.pipelines.build import compile_pipeline

    job = _guarded(lambda: load_job(job_file))
    _guarded(lambda: check_uri(artifacts, "--artifacts"))
    destination = artifacts or job.spec.output or f"s3://modelpress/{job.metadata.namespace}/" \
                                                   f"{job.metadata.name}/"
    _guarded(lambda: compile_pipeline(job, destination, str(output),
                                      trust_model_code=trust_model_code))
    console.print(f"wrote {output}")


@app.command()
def verify(output: Annotated[str, typer.Argument(help="A job's output folder or s3:// uri.")]
           ) -> None:
    """Check every published artifact against the digests in its lineage.json."""
    from modelpress.lineage import verify_outputs
    from modelpress.outputs import check_uri
    from modelpress.store import open_store

    _guarded(lambda: check_uri(output, "output"))
    lineage = _guarded(lambda: verify_outputs(open_store(output)))
    console.print(f"{len(lineage.artifacts)} artifacts match lineage.json", highlight=False)


@app.command("operator")
def operator_command(
        backend: Annotated[str, typer.Option(help="local | kfp")] = "local",
        namespace: Annotated[str | None, typer.Option("--namespace", "-n",
                                                      help="Watch this namespace.")] = None,
        all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A",
                                                     help="Watch every namespace.")] = False,
        metrics_port: Annotated[int, typer.Option(help="Port of /metrics.")] = 8080) -> None:
    """Run the operator: reconcile CompressionJobs into pipeline runs."""
    from modelpress.operator.main import run_operator

    _guarded(lambda: run_operator(backend, namespace, all_namespaces, metrics_port))


def _output_for(job: Any, output: str | None) -> tuple[str, str]:
    """Where the run publishes, and the name of the setting that chose it."""
    if output:
        return output, "--output"
    if job.spec.output:
        return str(job.spec.output), "spec.output"
    return str(Path("modelpress-out") / job.metadata.name), "--output"


def _job_inputs(job: Any) -> dict[str, str]:
    """Every location the job reads, by field."""
    inputs = {"spec.model.uri": job.spec.model.uri}
    inputs |= {f"spec.data.{name}": uri
               for name, uri in job.spec.data.sources().items()}
    return inputs


@app.command(epilog="Exit codes: 0 done (gates passed, or none set), 1 a step failed, "
                    "2 bad input (one line naming the field or file), 3 gates failed.")
def run(job_file: JobArgument,
        output: Annotated[str | None, typer.Option(
            "--output", "-o", help="Folder or s3:// uri for the artifacts.")] = None,
        trust_model_code: TrustOption = False) -> None:
    """Run the whole job on this machine (kfp.local), publish its artifacts and judge its
    promotion gates like the operator does."""
    from modelpress.jobfile import load_job
    from modelpress.outputs import check_output, output_lock
    from modelpress.records import read_results_document

    job = _guarded(lambda: load_job(job_file))
    destination, where = _output_for(job, output)
    _guarded(lambda: check_output(destination, where, _job_inputs(job)))
    if job.spec.promotion.registry is not None:
        from modelpress.registry import preflight

        _guarded(preflight)
    with contextlib.ExitStack() as held:
        _guarded(lambda: held.enter_context(output_lock(destination, where)))
        _preflight(job, trust_model_code)
        began = time.perf_counter()
        record = _guarded(lambda: _run_stoppably(job, destination, trust_model_code))
        wall_seconds = time.perf_counter() - began
        document = _guarded(lambda: read_results_document(destination))
        _print_summary(document, wall_seconds)
        verdict = _print_verdict(job, document)
        document, registry_failed = _register_run(job, destination, record, document, verdict)
    sys.stdout.write(json.dumps({"output": destination, "wallSeconds": round(wall_seconds, 2),
                                 "computeSeconds": round(document.compute_seconds, 2),
                                 **document.results.to_wire()}) + "\n")
    if verdict.decision == "Rejected":
        raise typer.Exit(3)
    if registry_failed:
        raise typer.Exit(1)


def _preflight(job: Any, trust_model_code: bool) -> None:
    """Everything the fetch step would refuse, refused before any step runs."""
    from modelpress.components.fetch import check_inputs

    for note in _guarded(lambda: check_inputs(job.spec, trust_model_code=trust_model_code)):
        console.print(f"note: {escape(note)}", highlight=False)


def _run_stoppably(job: Any, destination: str, trust_model_code: bool) -> ReportRecord:
    """Run the pipeline; SIGTERM or SIGINT stops its steps and removes their scratch. The
    report step's record of what it published (with each file's sha256)."""
    from modelpress.pipelines.local import run_local, stop_steps

    with tempfile.TemporaryDirectory(prefix="modelpress-") as scratch:
        events = Path(scratch) / "events.jsonl"
        failure: list[BaseException] = []
        record: list[ReportRecord] = []

        def target() -> None:
            try:
                record.append(run_local(job, destination, Path(scratch), events,
                                        trust_model_code=trust_model_code))
            except BaseException as error:  # handed to the main thread below
                failure.append(error)

        worker = threading.Thread(target=target, daemon=True)
        with _stop_on_signals() as stopped:
            worker.start()
            try:
                _show_progress(worker, events)
            except _Stopped:
                while worker.is_alive():  # a step may start while the last one is stopped
                    stop_steps()
                    worker.join(timeout=0.5)
                console.print(f"[red]stopped[/red] by {stopped[0]}: the running step was "
                              "ended and its scratch removed", highlight=False)
                raise typer.Exit(128 + stopped[1]) from None
        if failure:
            raise failure[0]
        return record[0]


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived while a run was in flight."""


@contextlib.contextmanager
def _stop_on_signals() -> Any:
    """While inside: SIGTERM and SIGINT raise _Stopped in the main thread (the default
    SIGTERM would end this process at once and orphan the running step)."""
    caught: list[Any] = []

    def handler(number: int, _frame: Any) -> None:
        if not caught:
            caught.extend([signal.Signals(number).name, number])
            raise _Stopped

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def _show_progress(worker: threading.Thread, events: Path) -> None:
    from modelpress.events import read_events

    shown = 0
    # A live status line only on a terminal: elsewhere rich would swallow the step lines.
    live = console.status("starting the pipeline…") if console.is_terminal else None
    with live or contextlib.nullcontext():
        while True:
            ended = not worker.is_alive()  # before reading: the last read sees every event
            seen = read_events(events)
            for event in seen[shown:]:
                if event.event == "started":
                    if live is not None:
                        live.update(f"running [bold]{escape(event.step)}[/bold]…")
                elif event.event == "finished":
                    console.print(f"[green]✓[/green] {escape(event.step):<16} "
                                  f"{event.seconds or 0.0:7.2f} s ", escape(event.message),
                                  highlight=False)
                else:
                    console.print(f"[red]✗[/red] {escape(event.step):<16}",
                                  escape(event.message), highlight=False)
            shown = len(seen)
            if ended:
                return
            worker.join(timeout=0.2)


def _print_summary(document: ResultsDocument, wall_seconds: float) -> None:
    results = document.results
    base, comp = results.baseline, results.compressed
    table = Table(title="modelpress results")
    table.add_column("figure")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    table.add_row("size (bytes)", f"{base.size_bytes:,}", f"{comp.size_bytes:,}")
    table.add_row("nonzero parameters", f"{base.nonzero_parameters or base.parameters:,}",
                  f"{comp.nonzero_parameters or comp.parameters:,}")
    table.add_row(escape(base.metric.name), f"{base.metric.value:.4f}",
                  f"{comp.metric.value:.4f}")
    for name, latency in comp.latency_ms.items():
        table.add_row(f"p50 latency {escape(name)} (ms)", f"{base.latency_ms[name].p50:.3f}",
                      f"{latency.p50:.3f}")
    _text_generation_rows(table, results)
    console.print(table)
    compute = document.compute_seconds
    console.print(f"compression ratio {results.compression_ratio:.2f}x, accuracy drop "
                  f"{results.accuracy_drop:.4f}, speedup {results.speedup}", highlight=False)
    console.print(f"wall {wall_seconds:.1f} s, steps' own compute {compute:.1f} s, orchestration "
                  f"overhead {1 - compute / wall_seconds:.0%}", highlight=False)
    for pool in results.benchmarks:
        if not pool.available:
            console.print(f"pool {pool.pool}: unavailable ({pool.reason})", highlight=False)
    console.print(f"artifacts: {document.artifacts.report}", highlight=False)


def _text_generation_rows(table: Table, results: Results) -> None:
    """A language model's perplexity and decode speed per pool."""
    quality = results.text_generation
    if quality is not None:
        table.add_row("perplexity", f"{quality.baseline_perplexity:.3f}",
                      f"{quality.compressed_perplexity:.3f}")
    for name, rate in results.compressed.tokens_per_second.items():
        table.add_row(f"decode tokens/s {escape(name)}",
                      f"{results.baseline.tokens_per_second[name]:.1f}", f"{rate:.1f}")


def _print_verdict(job: CompressionJob, document: ResultsDocument) -> Verdict:
    """Judge the gates with the operator's code; print the decision and every failure."""
    from modelpress.gates import gates_set, judge

    promotion = job.spec.promotion
    verdict = judge(document.results, promotion)
    if not gates_set(promotion):
        console.print("promotion: no gates set (spec.promotion.gates / condition)",
                      highlight=False)
    elif verdict.decision == "Rejected":
        console.print("[red]promotion: REJECTED[/red], failed gates:", highlight=False)
        for reason in verdict.reasons:
            console.print(f"  [red]✗[/red] {escape(reason)}", highlight=False)
    else:
        console.print("[green]promotion: gates passed[/green]:", highlight=False)
        for reason in verdict.reasons:
            console.print(f"  [green]✓[/green] {escape(reason)}", highlight=False)
    return verdict


def _register_run(job: CompressionJob, destination: str, record: ReportRecord,
                  document: ResultsDocument, verdict: Verdict) -> tuple[ResultsDocument, bool]:
    """spec.promotion.registry: a passing run's model, as the run recorded it, registered
    with the operator's code, and the version made (alias and its previous holder) written
    into results.json. The document, and whether registering failed (said in one line)."""
    from modelpress.operator.promotion import DigestMismatch, stage_verified
    from modelpress.records import RESULTS, write_results_document
    from modelpress.registry import (
        RegistryUnavailable,
        open_registry,
        register,
        registration_of,
    )
    from modelpress.store import open_store

    target = job.spec.promotion.registry
    if target is None:
        return document, False
    if verdict.decision == "Rejected":
        console.print(f"registry: nothing registered in {escape(target.model)} (gates failed)",
                      highlight=False)
        return document, False
    key = f"{job.metadata.namespace}/{job.metadata.name}"
    try:
        with tempfile.TemporaryDirectory(prefix="modelpress-register-") as scratch:
            files = stage_verified(destination, record.sha256, Path(scratch))
            registration = registration_of(job, key, files, record.sha256, document.results)
            version = register(open_registry(), target, registration)
            document = document.model_copy(update={"results": document.results.model_copy(
                update={"registry": version})})
            written = write_results_document(document, Path(scratch) / RESULTS)
            open_store(destination).put_file(written, RESULTS)
    except (RegistryUnavailable, DigestMismatch, ModelpressError) as error:
        console.print(f"[red]registry:[/red] {escape(one_line(str(error)))} (the run's "
                      f"results are in {escape(destination)}; run again to retry)",
                      highlight=False, soft_wrap=True)
        return document, True
    console.print(f"registry: {escape(version.uri)} is @{escape(version.alias)} (before: "
                  f"{escape(version.previous_version or 'unset')})", highlight=False)
    return document, False


if __name__ == "__main__":
    app()
