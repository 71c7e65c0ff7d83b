"""Side-by-side harness: the direct library recipes beside modelpress's own output.

Run by hand (not a timed test):  python benchmarks/harness.py [--skip-jobs] [--threads 1]

1. Runs the modelpress jobs listed in JOBS (unless --skip-jobs) to get our models.
2. Builds the direct recipes on the same models: onnxruntime `quantize_dynamic`
   per-channel int8 on MiniLM; torch-pruning 50% channels + fine-tune on the digits CNN.
3. In one process, measures every model interleaved (same runtime, threads, batch) and
   prints fidelity, size and latency with ratios to the fp32 baseline and to the recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JOBS = [ROOT / "examples" / "minilm-auto.yaml",
        ROOT / "benchmarks" / "jobs" / "minilm-prune-distill.yaml",
        ROOT / "examples" / "digits-structured-kd.yaml",
        ROOT / "examples" / "digits-sparse90.yaml"]
OUT = ROOT / "benchmarks" / "out"


def run_jobs() -> None:
    for job in JOBS:
        print(f"== modelpress run {job.name}", flush=True)
        subprocess.run([sys.executable, "-m", "modelpress.cli", "run", str(job), "--output",
                        str(OUT / job.stem)], check=True, stdout=subprocess.DEVNULL)


def minilm_direct(scratch: Path) -> tuple[Path, Path]:
    """fp32 export of MiniLM, and onnxruntime's dynamic per-channel int8 of it."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelpress.components import zoo
    from modelpress.components.modelio import export_onnx

    module = zoo.minilm_l6()
    module.load_state_dict(zoo.pretrained_state("minilm-l6"))
    sample = zoo.builtin_preprocessor("minilm-l6").tokenize(zoo.sentences("eval")[:4], "sample")
    fp32 = scratch / "minilm-fp32.onnx"
    with torch.no_grad():
        export_onnx(module, sample, ["input_ids", "attention_mask"], fp32)
    direct = scratch / "minilm-ort-dynamic.onnx"
    quantize_dynamic(str(fp32), str(direct), per_channel=True, weight_type=QuantType.QInt8)
    return fp32, direct


def digits_direct(scratch: Path) -> tuple[Path, Path]:
    """fp32 digits CNN, and torch-pruning 50% channels + 10 epochs of plain fine-tuning."""
    import torch
    import torch_pruning as tp

    from modelpress.components import zoo
    from modelpress.components.modelio import export_onnx

    def trained() -> torch.nn.Module:
        module = zoo.digits_cnn()
        module.load_state_dict(zoo.pretrained_state("digits-cnn"))
        return module.eval()

    sample = zoo.digits("test")
    fp32 = scratch / "digits-fp32.onnx"
    export_onnx(trained(), sample, ["x"], fp32)
    module = trained()
    example = torch.from_numpy(sample["x"][:2])
    pruner = tp.pruner.MetaPruner(module, example,
                                  importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[module[-1]])
    pruner.step()
    train = zoo.digits("train")
    inputs, labels = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    torch.manual_seed(0)
    for _ in range(10):
        module.train()
        for batch in torch.randperm(len(inputs)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    direct = scratch / "digits-tp50-finetune.onnx"
    export_onnx(module.eval(), sample, ["x"], direct)
    return fp32, direct


def fidelity(task: str, path: Path, reference: np.ndarray, data: dict) -> float:
    from modelpress.components.onnxstats import run_batched, session
    from modelpress.components.validate import task_metrics

    outputs = run_batched(session(path), data)
    return next(iter(task_metrics(task, outputs, reference, data.get("y")).values()))


def compare(title: str, task: str, models: dict[str, Path], data: dict, batches: list[int],
            threads: int, iterations: int) -> list[dict]:
    from modelpress.components.benchmark import interleaved_latency
    from modelpress.components.data import input_names, take
    from modelpress.components.onnxstats import run_batched, session

    reference = run_batched(session(models["fp32"]), data)
    sessions = {name: session(path, threads) for name, path in models.items()}
    rows = [{"model": name, "sizeBytes": path.stat().st_size,
             "metric": round(fidelity(task, path, reference, data), 4)}
            for name, path in models.items()]
    for batch in batches:
        feed = {k: v for k, v in take(data, batch).items() if k in input_names(data)}
        latency = interleaved_latency(sessions, feed, iterations, warmup=5)
        for row in rows:
            row[f"p50@{batch}"] = latency[row["model"]].p50
    print(f"\n### {title} ({threads} thread(s), onnxruntime CPU, interleaved)\n")
    header = ["model", "sizeBytes", "metric"] + [f"p50@{b}" for b in batches] + \
             [f"vs fp32 @{b}" for b in batches]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    base = rows[0]
    for row in rows:
        ratios = [f"{row[f'p50@{b}'] / base[f'p50@{b}']:.3f}" for b in batches]
        print("| " + " | ".join(str(row[h]) for h in header[:3 + len(batches)]) + " | "
              + " | ".join(ratios) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-jobs", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    if not args.skip_jobs:
        run_jobs()
    from modelpress.components import zoo

    with tempfile.TemporaryDirectory() as scratch:
        fp32, direct = minilm_direct(Path(scratch))
        minilm_tokenizer = zoo.builtin_preprocessor("minilm-l6")
        sentences = minilm_tokenizer.tokenize(zoo.sentences("eval"), "sentences")
        minilm = compare("MiniLM-L6 embeddings (metric: mean cosine to fp32)", "embedding",
                         {"fp32": fp32, "ort quantize_dynamic per-channel": direct,
                          "modelpress quantize auto": OUT / "minilm-auto" / "model.onnx",
                          "modelpress ffn-prune+distill+int8":
                              OUT / "minilm-prune-distill" / "model.onnx"},
                         sentences, [1, 32], args.threads, args.iterations)
        d_fp32, d_direct = digits_direct(Path(scratch))
        digits = compare("digits CNN (metric: accuracy)", "classification",
                         {"fp32": d_fp32, "torch-pruning 50% + fine-tune": d_direct,
                          "modelpress structured 50% + KD + int8":
                              OUT / "digits-structured-kd" / "model.onnx",
                          "modelpress 90% unstructured (gradual)":
                              OUT / "digits-sparse90" / "model.onnx"},
                         zoo.digits("test"), [1, 64], args.threads, args.iterations * 5)
    (OUT / "harness.json").write_text(json.dumps({"minilm": minilm, "digits": digits}, indent=2))


if __name__ == "__main__":
    main()
