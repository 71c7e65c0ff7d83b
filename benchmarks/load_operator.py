"""Load: many CompressionJobs applied at once to one operator; run by hand, not a test.

    python benchmarks/load_operator.py [--jobs 200] [--max-runs 2] [--poll 1.0] [--repeat 1]
        [--operator-cpus N] [--profile FILE]
    python benchmarks/load_operator.py --floor [--jobs 1000] [--operator-cpus N]

The Kubernetes API stand-in (tests/e2e/operator/kube_standin.py) runs in this process;
`modelpress operator --backend local` runs as its own process, its runs executed by a
fast fake runner (tests/integration/operator/fake_runners.py:succeed, a few milliseconds
of work in a worker process of its own). All jobs are created at once through the API,
by 64 client threads of a process of their own; then the benchmark waits for every job to
reach a terminal phase and reports:

- apply → Pending latency, per job: from the moment the API server stored the object to
  the first status write that gives it a phase (p50, p95, max);
- the operator's memory, its process and its intake process together (workers not
  included): resident (VmRSS: peak of samples every 0.1 s, and the sum of the kernel's
  high-water marks VmHWM), which counts twice the pages the intake shares with the
  operator it was forked from, and proportional (Pss, peak of samples), which counts
  each page once: the target applies to the latter;
- reconcile errors: the operator's modelpress_reconcile_errors_total, and handler (or
  ticker sync) failures in its log;
- the time until every job was terminal, how many ended in each phase, and that each
  job got exactly one run, started once;
- where the operator's wall time went (the controller and the local backend, timed by
  wrappers installed in the operator process before it starts); with `--profile FILE`,
  a cProfile of every thread of the operator process (pstats format).

Targets (issues 7 and 16): p95 ≤ 0.5 s, memory ≤ 200 MB, 0 errors, at 1,000 jobs. Exit status
1 when one is missed.

`--floor` runs benchmarks/floor_watcher.py instead of the operator (a bare watch that gives
each new job its phase, nothing else) with the same stand-in and load, and reports its
apply → Pending latency: what the harness itself allows on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from cli_runs import LIGHT_SPEC, job_document  # noqa: E402
from standin_operator import (  # noqa: E402
    JOBS_PATH,
    TERMINAL,
    KubeStandIn,
    OperatorProcess,
    start_standin,
)

# A kopf handler that failed, or a sync of the operator's ticker that did.
FAILURE_IN_LOG = r"Handler '[^']+' failed|Sync of \S+ failed"
TARGET_P95_S = 0.5
PROFILE_EXIT_S = 600.0
TARGET_MEMORY_MB = 200.0
PLURAL = "compressionjobs"
# Run inside the operator before it starts: wall time spent in the controller and the
# local backend, per call site, written as JSON to $MODELPRESS_LOAD_BREAKDOWN at exit.
BREAKDOWN = """
import atexit, json, os, threading, time
from modelpress.operator import controller as _controller
from modelpress.operator.backends import local as _local

_totals, _guard = {}, threading.Lock()


def _timed(owner, name, label):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - began
            with _guard:
                calls, total, longest = _totals.get(label, (0, 0.0, 0.0))
                _totals[label] = (calls + 1, total + spent, max(longest, spent))
    setattr(owner, name, wrapper)


_timed(_controller.Controller, "sync", "Controller.sync (all of it)")
_timed(_controller.Controller, "_step", "Controller._step (reconcile and actions)")
_timed(_local.LocalBackend, "has_capacity", "LocalBackend.has_capacity")
_timed(_local.LocalBackend, "submit", "LocalBackend.submit")
_timed(_local.LocalBackend, "poll", "LocalBackend.poll")
atexit.register(lambda: open(os.environ["MODELPRESS_LOAD_BREAKDOWN"], "w").write(
    json.dumps(_totals)))
"""
# With --profile: cProfile in the operator's main thread (kopf's event loop) and in every
# thread started after it (kopf's pool for sync handlers, the Event poster), merged into
# one pstats file at $MODELPRESS_LOAD_PROFILE when the operator exits.
PROFILE = """
import cProfile, pstats, sys
_profiles = [cProfile.Profile()]


def _profile_thread(*_):
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()  # replaces this hook for the rest of the thread's life


threading.setprofile(_profile_thread)
_profiles[0].enable()


def _dump_profile():
    for profile in _profiles:
        profile.disable()
    merged = pstats.Stats(_profiles[0])
    for profile in _profiles[1:]:
        try:
            merged.add(profile)
        except TypeError:  # a thread that never called a Python function
            pass
    merged.dump_stats(os.environ["MODELPRESS_LOAD_PROFILE"])


atexit.register(_dump_profile)
"""


# The load's clients (apply_jobs): POST each job read from stdin to argv[1], argv[2] at once.
APPLY = """
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

def create(document):
    request = urllib.request.Request(sys.argv[1], method="POST", data=json.dumps(
        document).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


with ThreadPoolExecutor(max_workers=int(sys.argv[2])) as pool:
    list(pool.map(create, json.load(sys.stdin)))
"""


class Timeline:
    """When each job was stored, first given a phase, and first terminal (monotonic s).

    Recorded inside the stand-in's store, so the times are the API server's own."""

    def __init__(self, api: KubeStandIn) -> None:
        self.created: dict[str, float] = {}
        self.first_phase: dict[str, tuple[float, str]] = {}
        self.terminal: dict[str, tuple[float, str]] = {}
        store = api.store
        create, update = store.create, store.update

        def timed_create(kind: Any, namespace: str | None, body: dict[str, Any]) -> Any:
            stored = create(kind, namespace, body)
            if kind.plural == PLURAL:
                self.created[stored["metadata"]["name"]] = time.monotonic()
            return stored

        def timed_update(kind: Any, namespace: str | None, name: str, new: dict[str, Any],
                         subresource: str | None) -> Any:
            stored = update(kind, namespace, name, new, subresource)
            phase = (stored.get("status") or {}).get("phase")
            if kind.plural == PLURAL and phase:
                now = time.monotonic()
                self.first_phase.setdefault(name, (now, phase))
                if phase in TERMINAL:
                    self.terminal.setdefault(name, (now, phase))
            return stored

        store.create = timed_create  # type: ignore[method-assign]
        store.update = timed_update  # type: ignore[method-assign]

    def latencies(self) -> list[float]:
        return sorted(self.first_phase[name][0] - self.created[name]
                      for name in self.created if name in self.first_phase)


class MemorySampler(threading.Thread):
    """The operator's memory: its process and its intake process together, sampled every
    `interval` seconds. Resident (VmRSS) sums count the pages the two share (the intake
    is forked from the operator) twice; proportional (Pss) sums count each page once."""

    def __init__(self, pids: list[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peak_kb = 0
        self.peak_pss_kb = 0
        self.stopped = threading.Event()

    def read(self, field: str, pid: int | None = None) -> int:
        """`field` of /proc/PID/status (kB), summed over the processes (or of `pid`)."""
        return sum(_proc_field(f"/proc/{one}/status", field)
                   for one in ([pid] if pid else self.pids))

    def pss(self) -> int:
        return sum(_proc_field(f"/proc/{pid}/smaps_rollup", "Pss") for pid in self.pids)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak_kb = max(self.peak_kb, self.read("VmRSS"))
            self.peak_pss_kb = max(self.peak_pss_kb, self.pss())


def _proc_field(path: str, field: str) -> int:
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found[1]) if found else 0


def intake_pid(log: Path) -> int:
    """The operator's intake process, as the operator logs it at startup."""
    found = re.search(r"The intake \(pid (\d+)\)", log.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"the operator logged no intake process: {log}")
    return int(found[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def reconcile_errors(metrics: str) -> float:
    return sum(float(value) for value in re.findall(
        r"^modelpress_reconcile_errors_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def breakdown_of(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return {label: {"calls": calls, "totalSeconds": round(total, 2),
                    "meanMs": round(1000 * total / calls, 2), "maxMs": round(1000 * longest, 1)}
            for label, (calls, total, longest) in json.loads(path.read_text()).items()}


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(statistics.median(values), 3),
            "p95": round(percentile(values, 0.95), 3), "max": round(max(values), 3)}


def runs_started(workdir: Path) -> dict[str, int]:
    """Run folders (one per job) and how often a run's first step started (1 each)."""
    folders = [folder for folder in workdir.iterdir() if folder.is_dir()] \
        if workdir.is_dir() else []
    starts = [sum(1 for line in (folder / "events.jsonl").read_text().splitlines()
                  if '"started"' in line and '"fetch"' in line)
              for folder in folders if (folder / "events.jsonl").is_file()]
    return {"runFolders": len(folders), "runsStartedTwice": sum(1 for n in starts if n > 1)}


def run(jobs: int, max_runs: int, poll: float, timeout: float, runner: str,
        profile: Path | None = None, settings: dict[str, str] | None = None,
        cpus: tuple[set[int], set[int]] | None = None) -> dict[str, Any]:
    """One load run; `cpus`: (the harness's CPUs, this process pinned to them already; the
    operator's), or None to share all."""
    api = start_standin()
    timeline = Timeline(api)
    root = Path(tempfile.mkdtemp(prefix="modelpress-load-"))
    breakdown = root / "breakdown.json"
    profiling = {"MODELPRESS_LOAD_PROFILE": str(profile.resolve())} if profile else {}
    operator = OperatorProcess(root, api, runner=runner, cpus=cpus[1] if cpus else None,
                               prologue=BREAKDOWN + (PROFILE if profile else ""), extra_env={
        "MODELPRESS_MAX_RUNS_IN_FLIGHT": str(max_runs),
        # Every job of the load lies in one namespace: its cap must not be the tighter one.
        "MODELPRESS_MAX_RUNS_PER_NAMESPACE": str(max_runs),
        "MODELPRESS_POLL_INTERVAL_SECONDS": str(poll),
        "MODELPRESS_LOAD_BREAKDOWN": str(breakdown), **profiling, **(settings or {})})
    try:
        operator.start()
        assert operator.process is not None
        intake = intake_pid(operator.log_path)
        sampler = MemorySampler([operator.process.pid, intake])
        sampler.start()
        idle_rss_kb, idle_pss_kb = sampler.read("VmRSS"), sampler.pss()
        began = time.monotonic()
        apply_jobs(api, jobs)
        applied_s = time.monotonic() - began
        deadline = began + timeout
        while len(timeline.terminal) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        all_terminal_s = time.monotonic() - began
        metrics = operator.metrics()
        high_water_kb = {pid: sampler.read("VmHWM", pid) for pid in sampler.pids}
        operator_cpu_s = cpu_seconds(operator.process.pid)
        intake_cpu_s = cpu_seconds(intake)
        sampler.stopped.set()
    finally:
        if profile and operator.process is not None:
            # The profile is written at exit: give kopf's clean shutdown (a task per timer
            # to cancel, on a busy machine) longer than stop()'s 30 s before a SIGKILL.
            operator.process.terminate()
            operator.process.wait(timeout=PROFILE_EXIT_S)
        operator.stop()
        api.stop()
    log = operator.log_path.read_text(errors="replace")
    latencies = timeline.latencies()
    phases = [phase for _, phase in timeline.terminal.values()]
    return {
        "jobs": jobs, "maxRunsInFlight": max_runs, "pollSeconds": poll, "runner": runner,
        "operatorSettings": settings or {},
        "cpus": described(cpus),
        "applySeconds": round(applied_s, 2),
        "givenAPhase": len(latencies), "terminal": len(timeline.terminal),
        "succeeded": phases.count("Succeeded"), "failed": phases.count("Failed"),
        "allTerminalSeconds": round(all_terminal_s, 1),
        "applyToPendingSeconds": spread(latencies),
        "firstPhases": sorted({phase for _, phase in timeline.first_phase.values()}),
        "operatorRssMB": {"idle": round(idle_rss_kb / 1024, 1),
                          "peakSampled": round(sampler.peak_kb / 1024, 1),
                          "highWater": round(sum(high_water_kb.values()) / 1024, 1),
                          "highWaterOperator": round(high_water_kb[operator.process.pid]
                                                     / 1024, 1),
                          "highWaterIntake": round(high_water_kb[intake] / 1024, 1)},
        "operatorPssMB": {"idle": round(idle_pss_kb / 1024, 1),
                          "peakSampled": round(sampler.peak_pss_kb / 1024, 1)},
        "operatorCpuSeconds": round(operator_cpu_s, 1),
        "intakeCpuSeconds": round(intake_cpu_s, 1),
        "reconcileErrorsTotal": reconcile_errors(metrics),
        "handlerFailuresInLog": len(re.findall(FAILURE_IN_LOG, log)),
        **runs_started(root / "runs"),
        "operatorLog": str(operator.log_path),
        "wallTimeInOperator": breakdown_of(breakdown),
    }


def split_cpus(operator_cpus: int) -> tuple[set[int], set[int]]:
    """(the harness's CPUs, the operator's): the last `operator_cpus` of this process's
    CPUs for the operator, the rest for the API stand-in and the clients."""
    available = sorted(os.sched_getaffinity(0))
    if not 0 < operator_cpus < len(available):
        raise SystemExit(f"--operator-cpus {operator_cpus}: this machine lends "
                         f"{len(available)} CPUs, and the harness needs at least one")
    return set(available[:-operator_cpus]), set(available[-operator_cpus:])


def described(cpus: tuple[set[int], set[int]] | None) -> dict[str, list[int]] | str:
    """The CPU split as a report states it."""
    return {"harness": sorted(cpus[0]), "operator": sorted(cpus[1])} if cpus else "shared"


def apply_jobs(api: KubeStandIn, jobs: int) -> None:
    """POST `jobs` CompressionJobs at once, from 64 threads (as many clients would) of a
    process of their own: clients in the stand-in's process would share its GIL, and so
    slow the API server itself down."""
    import subprocess

    documents = [job_document(f"load-{index:04d}", LIGHT_SPEC) for index in range(jobs)]
    subprocess.run([sys.executable, "-c", APPLY, api.url + JOBS_PATH.format(
        namespace="default"), str(min(64, jobs))], input=json.dumps(documents), text=True,
        check=True)


def floor(jobs: int, cpus: tuple[set[int], set[int]] | None = None) -> dict[str, Any]:
    """apply → Pending with benchmarks/floor_watcher.py in the operator's place (on the
    operator's CPUs when `cpus` splits them; this process pinned to the harness's already)."""
    import subprocess

    api = start_standin()
    timeline = Timeline(api)
    watcher = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "floor_watcher.py"),
                                api.url], preexec_fn=(lambda: os.sched_setaffinity(0, cpus[1]))
                               if cpus else None)
    try:
        time.sleep(2.0)  # its watch is open
        began = time.monotonic()
        apply_jobs(api, jobs)
        applied_s = time.monotonic() - began
        deadline = time.monotonic() + 60.0
        while len(timeline.first_phase) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        watcher.kill()
        watcher.wait()
        api.stop()
    latencies = timeline.latencies()
    return {"floor": "benchmarks/floor_watcher.py", "jobs": jobs,
            "cpus": described(cpus),
            "applySeconds": round(applied_s, 2), "givenAPhase": len(latencies),
            "applyToPendingSeconds": spread(latencies)}


def verdict(report: dict[str, Any]) -> list[str]:
    """The targets missed (empty when every one is met)."""
    missed = []
    if report["terminal"] < report["jobs"]:
        missed.append(f"only {report['terminal']} of {report['jobs']} jobs became terminal")
    p95 = report["applyToPendingSeconds"]["p95"]
    if p95 is None or p95 > TARGET_P95_S:
        missed.append(f"apply → Pending p95 {p95} s > {TARGET_P95_S} s")
    if report["operatorPssMB"]["peakSampled"] > TARGET_MEMORY_MB:
        missed.append(f"operator memory {report['operatorPssMB']['peakSampled']} MB > "
                      f"{TARGET_MEMORY_MB} MB")
    if report["runFolders"] != report["jobs"] or report["runsStartedTwice"]:
        missed.append(f"{report['runFolders']} runs for {report['jobs']} jobs, "
                      f"{report['runsStartedTwice']} started twice")
    if report["reconcileErrorsTotal"] or report["handlerFailuresInLog"]:
        missed.append(f"{report['reconcileErrorsTotal']:g} reconcile errors, "
                      f"{report['handlerFailuresInLog']} handler failures in the log")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--max-runs", type=int, default=2,
                        help="MODELPRESS_MAX_RUNS_IN_FLIGHT of the operator (its default: 2)")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="MODELPRESS_POLL_INTERVAL_SECONDS of the operator")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--runner", default="fake_runners:succeed")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run it this many times (the machine is noisy); the summary "
                             "lists each run's p95")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an operator setting for this run (e.g. MODELPRESS_FAST_INTAKE="
                             "false), to compare settings side by side")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="cProfile the operator process (every thread) into FILE (pstats; "
                             "read with `python -m pstats FILE`); slows the operator down, so "
                             "its latencies are not comparable with an unprofiled run")
    parser.add_argument("--operator-cpus", type=int, metavar="N",
                        help="pin the operator (its intake, its runs) to N CPUs of its own and "
                             "the API stand-in and the clients to the rest, as in a cluster: "
                             "the chart requests 1 CPU for the operator's pod, and the API "
                             "server runs elsewhere (default: all share every CPU)")
    parser.add_argument("--floor", action="store_true",
                        help="a bare watcher instead of the operator: the harness's own floor")
    arguments = parser.parse_args()
    cpus = split_cpus(arguments.operator_cpus) if arguments.operator_cpus else None
    if cpus:  # before the stand-in's threads and the clients' process: they inherit it
        os.sched_setaffinity(0, cpus[0])
    if arguments.floor:
        print(json.dumps(floor(arguments.jobs, cpus), indent=2))
        return 0
    reports = []
    for _ in range(arguments.repeat):
        report = run(arguments.jobs, arguments.max_runs, arguments.poll, arguments.timeout,
                     arguments.runner, arguments.profile,
                     dict(setting.split("=", 1) for setting in arguments.setting),
                     cpus)
        report["targetsMissed"] = verdict(report)
        reports.append(report)
    document = reports[0] if len(reports) == 1 else {
        "p95PerRun": [r["applyToPendingSeconds"]["p95"] for r in reports],
        "p50PerRun": [r["applyToPendingSeconds"]["p50"] for r in reports],
        "maxPerRun": [r["applyToPendingSeconds"]["max"] for r in reports],
        "rssHighWaterPerRun": [r["operatorRssMB"]["highWater"] for r in reports],
        "pssPeakPerRun": [r["operatorPssMB"]["peakSampled"] for r in reports],
        "operatorCpuSecondsPerRun": [r["operatorCpuSeconds"] for r in reports],
        "runs": reports}
    text = json.dumps(document, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")
    return 1 if any(r["targetsMissed"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
