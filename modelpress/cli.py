"""The `modelpress` command. Rooms are imported lazily so `modelpress crd` starts fast.

Exit codes: 0 done, 1 a step failed, 2 bad input (one line naming the field or file).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelpress.errors import InvalidInput, ModelpressError, StepFailed, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compress trained models and prove they are still good enough to ship.")
# Bound to the real stderr now: run_local redirects sys.stderr to capture kfp.local's log.
console = Console(file=sys.stderr)
JobArgument = Annotated[Path, typer.Argument(help="A CompressionJob YAML file.")]


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
                = "") -> None:
    """Write the Kubeflow Pipelines IR for a job."""
    from modelpress.jobfile import load_job
    from modelpress.pipelines.build import compile_pipeline

    job = _guarded(lambda: load_job(job_file))
    destination = artifacts or job.spec.output or f"s3://modelpress/{job.metadata.namespace}/" \
                                                   f"{job.metadata.name}/"
    compile_pipeline(job, destination, str(output))
    console.print(f"wrote {output}")


@app.command()
def verify(output: Annotated[str, typer.Argument(help="A job's output folder or s3:// uri.")]
           ) -> None:
    """Check every published artifact against the digests in its lineage.json."""
    from modelpress.lineage import verify_outputs
    from modelpress.store import open_store

    lineage = _guarded(lambda: verify_outputs(open_store(output)))
    console.print(f"{len(lineage['artifacts'])} artifacts match lineage.json", highlight=False)


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


def _output_for(job: Any, output: str | None) -> str:
    if output:
        return output
    if job.spec.output:
        return str(job.spec.output)
    return str(Path("modelpress-out") / job.metadata.name)


@app.command()
def run(job_file: JobArgument,
        output: Annotated[str | None, typer.Option(
            "--output", "-o", help="Folder or s3:// uri for the artifacts.")] = None) -> None:
    """Run the whole job on this machine (kfp.local) and publish its artifacts."""
    from modelpress.components.fetch import check_inputs
    from modelpress.jobfile import load_job
    from modelpress.store import check_destination

    job = _guarded(lambda: load_job(job_file))
    _guarded(lambda: check_inputs(job.spec))
    destination = _output_for(job, output)
    from_spec = not output and job.spec.output
    _guarded(lambda: check_destination(destination, "spec.output" if from_spec else "--output"))
    began = time.perf_counter()
    _guarded(lambda: _run_with_progress(job, destination))
    wall_seconds = time.perf_counter() - began
    document = _guarded(lambda: _read_results(destination))
    _print_summary(document, wall_seconds)
    sys.stdout.write(json.dumps({"output": destination, "wallSeconds": round(wall_seconds, 2),
                                 "computeSeconds": round(_compute_seconds(document), 2),
                                 **document["results"]}) + "\n")


def _run_with_progress(job: Any, destination: str) -> None:
    from modelpress.pipelines.local import run_local

    with tempfile.TemporaryDirectory(prefix="modelpress-") as scratch:
        events = Path(scratch) / "events.jsonl"
        failure: list[BaseException] = []

        def target() -> None:
            try:
                run_local(job, destination, Path(scratch), events)
            except BaseException as error:  # handed to the main thread below
                failure.append(error)

        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        _show_progress(worker, events)
        if failure:
            raise failure[0]


def _show_progress(worker: threading.Thread, events: Path) -> None:
    shown = 0
    # A live status line only on a terminal: elsewhere rich would swallow the step lines.
    live = console.status("starting the pipeline…") if console.is_terminal else None
    with live or contextlib.nullcontext():
        while worker.is_alive() or shown < _count_lines(events):
            lines = events.read_text().splitlines() if events.is_file() else []
            for line in lines[shown:]:
                event = json.loads(line)
                if event["event"] == "started":
                    if live is not None:
                        live.update(f"running [bold]{event['step']}[/bold]…")
                elif event["event"] == "finished":
                    console.print(f"[green]✓[/green] {event['step']:<16} "
                                  f"{event['seconds']:7.2f} s ", escape(str(event["message"])),
                                  highlight=False)
                else:
                    console.print(f"[red]✗[/red] {event['step']:<16}",
                                  escape(str(event["message"])), highlight=False)
            shown = len(lines)
            worker.join(timeout=0.2)


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _read_results(destination: str) -> dict[str, Any]:
    from modelpress.store import open_store

    with tempfile.TemporaryDirectory() as scratch:
        local = open_store(destination).get_file("results.json", Path(scratch) / "results.json")
        document: dict[str, Any] = json.loads(local.read_text())
    if "results" not in document:
        raise StepFailed("report", f"{destination}/results.json has no results")
    return document


def _compute_seconds(document: dict[str, Any]) -> float:
    return float(sum(step["durationSeconds"] for step in document["steps"]))


def _print_summary(document: dict[str, Any], wall_seconds: float) -> None:
    results = document["results"]
    table = Table(title="modelpress results")
    table.add_column("figure")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    base, comp = results["baseline"], results["compressed"]
    table.add_row("size (bytes)", f"{base['sizeBytes']:,}", f"{comp['sizeBytes']:,}")
    table.add_row("nonzero parameters", f"{base['nonzeroParameters']:,}",
                  f"{comp['nonzeroParameters']:,}")
    table.add_row(base["metric"]["name"], f"{base['metric']['value']:.4f}",
                  f"{comp['metric']['value']:.4f}")
    for pool, latency in comp["latencyMs"].items():
        table.add_row(f"p50 latency {pool} (ms)", f"{base['latencyMs'][pool]['p50']:.3f}",
                      f"{latency['p50']:.3f}")
    console.print(table)
    compute = _compute_seconds(document)
    console.print(f"compression ratio {results['compressionRatio']:.2f}x, accuracy drop "
                  f"{results['accuracyDrop']:.4f}, speedup {results['speedup']}", highlight=False)
    console.print(f"wall {wall_seconds:.1f} s, steps' own compute {compute:.1f} s, orchestration "
                  f"overhead {1 - compute / wall_seconds:.0%}", highlight=False)
    for pool in results["benchmarks"]:
        if not pool["available"]:
            console.print(f"pool {pool['pool']}: unavailable ({pool['reason']})", highlight=False)
    console.print(f"artifacts: {document['artifacts']['report']}", highlight=False)


if __name__ == "__main__":
    app()
