"""modelpress's `quantize: {mode: auto}` on SmolLM2-135M beside the model builder's direct
recipes, measured in one run (issue 13's Must show).

1. Runs `modelpress run examples/smollm2-int4.yaml --output OUT/job` (auto; bar: top-1
   agreement >= 0.90 and perplexity +<= 5%) and reads its results.json: the chosen
   candidate, every candidate's figures and why it lost.
2. Builds onnxruntime-genai's model builder recipes with its defaults, `-p int4 -e cpu`
   and `-p int8 -e cpu`, from the same builtin SmolLM2 folder.
3. Measures the job's fp32 folder (`baseline/`), both builder folders and the job's
   published folder with `components/llm_metrics`: perplexity and teacher-forced top-1
   agreement with fp32 on the held-out english-text eval split (the windows validate
   uses: up to 16 of 256 tokens), prefill p50 and decode tokens/s of all four models
   interleaved (same threads, same prompt tokens, alternating rounds), bytes on disk
   (model.onnx + data, as compressionRatio counts them). Prints markdown tables and writes
   OUT/llm-vs-builder.json.

Figures are relative to the fp32 model converted from the shipped Q4_1 GGUF.

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/llm_vs_builder.py --threads 1 --rounds 7 \
        [--out benchmarks/out/llm-vs-builder] [--reuse-job]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from modelpress.api import Candidate, Model
from modelpress.components.llm_export import model_bytes, run_model_builder
from modelpress.components.llm_metrics import (
    LlmProbe,
    decode_tokens_per_second,
    prefill_latency_ms,
    speed_prompt,
    teacher_forced,
    token_windows,
)
from modelpress.components.llm_zoo import english_text, smollm2_folder
from modelpress.records import ResultsDocument, read_results_document

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "smollm2-int4.yaml"
FP32 = "fp32 (job baseline/)"
OURS = "modelpress auto"
DIRECT = {"builder -p int4 -e cpu": "int4", "builder -p int8 -e cpu": "int8"}
# Windows, prompt lengths and the decode definition (prompt tokens, new tokens) are
# llm_metrics' LlmProbe defaults: the same as the job's validate and benchmark steps and its
# auto probe, so every decode figure of a run measures the same thing.
PROBE = LlmProbe()
WINDOW_TOKENS = PROBE.window_tokens
MAX_WINDOWS = PROBE.max_windows
PREFILL_LENGTHS = PROBE.prefill_lengths
DECODE_PROMPT = PROBE.decode_prompt_tokens
DECODE_NEW = PROBE.decode_new_tokens
# The Must-show bar for the modelpress row.
MIN_AGREEMENT, MAX_PERPLEXITY_INCREASE = 0.90, 0.05
MIN_DECODE_SPEEDUP, MAX_BYTES_RATIO = 2.5, 0.3
TAIL_LINES = 40


class ModelRow(Model):
    """One model's figures, each ratio relative to the fp32 folder in the same run."""

    name: str
    folder: str
    build_seconds: float | None = None
    bytes: int = Field(description="model.onnx and its data (what compressionRatio counts).")
    bytes_ratio: float
    perplexity: float
    perplexity_increase: float
    top1_agreement: float
    prefill_ms: dict[str, float]
    decode_tokens_per_second: float
    decode_speedup: float
    meets_bar: bool


class JobSummary(Model):
    """What the modelpress job itself reported."""

    exit_code: int
    wall_seconds: float
    chosen: str | None
    candidates: list[Candidate]
    promotion: str
    reasons: list[str]


class Report(Model):
    threads: int
    rounds: int
    load_average_before: list[float]
    load_average_after: list[float]
    windows: int
    scored_tokens: int
    job: JobSummary
    models: list[ModelRow]


# ----------------------------------------------------------------------------- the job


def run_job(output: Path, reuse: bool) -> tuple[int, float]:
    """`modelpress run` of the example into `output`; its exit code and wall seconds.
    With `reuse` and a results.json already there, the earlier run is read instead."""
    if reuse and (output / "results.json").is_file():
        print(f"== reusing the job output in {output}", flush=True)
        return 0, 0.0
    shutil.rmtree(output, ignore_errors=True)
    command = [str(Path(sys.executable).parent / "modelpress"), "run", str(JOB),
               "--output", str(output)]
    print(f"== {' '.join(command)}", flush=True)
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    wall = time.perf_counter() - began
    (output.parent / "job.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode not in (0, 3):  # 3: gates failed, results.json still written
        tail = (done.stdout + done.stderr).splitlines()[-TAIL_LINES:]
        sys.exit(f"modelpress run exited {done.returncode}; last lines:\n" + "\n".join(tail))
    return done.returncode, wall


def summarize_job(document: ResultsDocument, exit_code: int, wall: float) -> JobSummary:
    chosen = next((c.name for c in document.results.candidates if c.chosen), None)
    return JobSummary(exit_code=exit_code, wall_seconds=round(wall, 1), chosen=chosen,
                      candidates=document.results.candidates,
                      promotion=document.promotion.decision,
                      reasons=list(document.promotion.reasons))


def genai_folder_of(location: str) -> Path:
    """The folder of a published model.onnx (artifacts name the file, by uri)."""
    return Path(location.removeprefix("file://")).parent


# ----------------------------------------------------------------------------- the builder


def build_direct(out: Path) -> dict[str, tuple[Path, float]]:
    """The builder's direct recipes, defaults only (no extra options)."""
    hf = smollm2_folder()
    built = {}
    for name, precision in DIRECT.items():
        target = out / f"builder-{precision}"
        shutil.rmtree(target, ignore_errors=True)
        began = time.perf_counter()
        run_model_builder(hf, target, precision, "cpu", {})
        built[name] = (target, time.perf_counter() - began)
        print(f"built {name} in {built[name][1]:.1f} s", flush=True)
    return built


# ----------------------------------------------------------------------------- measuring


def measure(folders: dict[str, Path], build_seconds: dict[str, float], threads: int,
            rounds: int) -> tuple[list[ModelRow], int, int]:
    """Every model's row, the number of eval windows and of scored tokens."""
    fp32 = folders[FP32]
    windows = token_windows(fp32, english_text("eval"), WINDOW_TOKENS)[:MAX_WINDOWS]
    reference = teacher_forced(fp32, windows, threads)
    quality = {FP32: reference}
    for name, folder in folders.items():
        if name != FP32:
            quality[name] = teacher_forced(folder, windows, threads)
        print(f"quality {name}: perplexity {quality[name].perplexity:.3f}", flush=True)
    prompt = speed_prompt(windows, max(*PREFILL_LENGTHS, DECODE_PROMPT))
    prefill = prefill_latency_ms(folders, prompt, PREFILL_LENGTHS, threads, rounds, warmup=1)
    print("prefill measured", flush=True)
    decode = decode_tokens_per_second(folders, prompt[:DECODE_PROMPT], DECODE_NEW, threads,
                                      rounds, warmup=1)
    base_bytes = model_bytes(fp32)
    rows = []
    for name, folder in folders.items():
        ours = quality[name]
        row = ModelRow(
            name=name, folder=str(folder), build_seconds=build_seconds.get(name),
            bytes=model_bytes(folder),
            bytes_ratio=model_bytes(folder) / base_bytes, perplexity=ours.perplexity,
            perplexity_increase=ours.perplexity / reference.perplexity - 1.0,
            top1_agreement=float((ours.top1 == reference.top1).mean()),
            prefill_ms={str(length): prefill[name][length] for length in PREFILL_LENGTHS},
            decode_tokens_per_second=decode[name],
            decode_speedup=decode[name] / decode[FP32], meets_bar=False)
        row.meets_bar = (row.top1_agreement >= MIN_AGREEMENT
                         and row.perplexity_increase <= MAX_PERPLEXITY_INCREASE
                         and row.decode_speedup >= MIN_DECODE_SPEEDUP
                         and row.bytes_ratio <= MAX_BYTES_RATIO)
        rows.append(row)
    return rows, len(windows), reference.scored


# ----------------------------------------------------------------------------- the report


def print_models(report: Report) -> None:
    print(f"\n### SmolLM2-135M ({report.threads} thread(s), onnxruntime-genai CPU, "
          f"{report.rounds} interleaved rounds, p50; {report.windows} eval windows, "
          f"{report.scored_tokens} scored tokens; load average "
          f"{report.load_average_before[0]:.2f} -> {report.load_average_after[0]:.2f})")
    lengths = " | ".join(f"prefill@{length} ms" for length in PREFILL_LENGTHS)
    print(f"| model | bytes | vs fp32 | perplexity | ppl + | top-1 agreement | {lengths} | "
          "decode tok/s | vs fp32 | Must-show bar |")
    print("|---|---|---|---|---|---|" + "---|" * len(PREFILL_LENGTHS) + "---|---|---|")
    for row in report.models:
        prefill = " | ".join(f"{row.prefill_ms[str(length)]:.1f}" for length in PREFILL_LENGTHS)
        print(f"| {row.name} | {row.bytes / 1e6:.1f} MB | {row.bytes_ratio:.3f} | "
              f"{row.perplexity:.3f} | {row.perplexity_increase:+.1%} | "
              f"{row.top1_agreement:.3f} | {prefill} | {row.decode_tokens_per_second:.1f} | "
              f"{row.decode_speedup:.2f}x | {'met' if row.meets_bar else 'missed'} |")


def print_candidates(job: JobSummary) -> None:
    ran = f"{job.wall_seconds:.0f} s" if job.wall_seconds else "an earlier run, reused"
    print(f"\n### The job's auto candidates (calibration text; exit {job.exit_code}, {ran}; "
          f"promotion {job.promotion})")
    print("| candidate | chosen | accuracy drop | perplexity + | decode tok/s | bytes | why |")
    print("|---|---|---|---|---|---|---|")
    for c in job.candidates:
        drop = "" if c.accuracy_drop is None else f"{c.accuracy_drop:.4f}"
        ppl = "" if c.perplexity_increase is None else f"{c.perplexity_increase:+.1%}"
        speed = "" if c.tokens_per_second is None else f"{c.tokens_per_second:.1f}"
        size = "" if c.size_bytes is None else f"{c.size_bytes / 1e6:.1f} MB"
        print(f"| {c.name} | {'yes' if c.chosen else ''} | {drop} | {ppl} | {speed} | {size} | "
              f"{c.reason} |")
    for reason in job.reasons:
        print(f"- promotion: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "llm-vs-builder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reuse-job", action="store_true",
                        help="read OUT/job/results.json when present instead of rerunning")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    before = list(os.getloadavg())
    exit_code, wall = run_job(args.out / "job", args.reuse_job)
    document = read_results_document(str(args.out / "job"))
    job = summarize_job(document, exit_code, wall)
    print_candidates(job)
    built = build_direct(args.out)
    folders = {FP32: genai_folder_of(document.artifacts.baseline),
               **{name: folder for name, (folder, _) in built.items()},
               OURS: genai_folder_of(document.artifacts.model)}
    rows, windows, scored = measure(folders, {name: s for name, (_, s) in built.items()},
                                    args.threads, args.rounds)
    report = Report(threads=args.threads, rounds=args.rounds, load_average_before=before,
                    load_average_after=list(os.getloadavg()), windows=windows,
                    scored_tokens=scored, job=job, models=rows)
    (args.out / "llm-vs-builder.json").write_text(report.model_dump_json(by_alias=True,
                                                                         indent=2))
    print_candidates(job)
    print_models(report)


if __name__ == "__main__":
    main()
