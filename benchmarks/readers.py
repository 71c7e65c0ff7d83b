"""Peak memory of the data readers on a generated 50 MB file, csv and json lines.

    python benchmarks/readers.py [--megabytes 50] [--max-tokens 128] [--max-rows N]

Each file is read in a fresh process (`--read`) with the builtin MiniLM tokenizer, the way
fetch reads a job's data. The process reports its resident memory after loading the
tokenizer (the baseline) and at its peak (ru_maxrss), plus the bytes of the arrays it
returned: padded int64 token arrays are the floor for any reader that hands over dense
arrays, so `peak - baseline` is judged against them and against the file's size.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024


def generate(folder: Path, megabytes: int) -> list[Path]:
    """A csv and a jsonl of about `megabytes` each: sentences of shipped words, 5 to 60
    words long, each with a label name."""
    from modelpress.components import zoo

    words = np.array(zoo.SENTENCES_FILE.read_text(encoding="utf-8").split())
    rng = np.random.default_rng(0)
    csv_path, jsonl_path = folder / "data.csv", folder / "data.jsonl"
    with csv_path.open("w", newline="", encoding="utf-8") as table, \
            jsonl_path.open("w", encoding="utf-8") as lines:
        writer = csv.writer(table)
        writer.writerow(["text", "label"])
        while table.tell() < megabytes * MB:
            text = " ".join(rng.choice(words, size=int(rng.integers(5, 60))))
            label = "positive" if rng.random() < 0.5 else "negative"
            writer.writerow([text, label])
            lines.write(json.dumps({"text": text, "label": label}) + "\n")
    return [csv_path, jsonl_path]


def read(path: Path, max_tokens: int, max_rows: int | None) -> dict[str, float]:
    """Read `path` as fetch would; resident megabytes before and at the peak."""
    from modelpress.components import zoo
    from modelpress.components.data import ReadOptions, load_dataset
    from modelpress.components.preprocess import Preprocessor

    model = Preprocessor(zoo.minilm_dir(), {"negative": 0, "positive": 1}, max_tokens,
                         ("input_ids", "attention_mask"))
    model.tokenize(["warm up"], "spec.data.eval")  # the tokenizer is part of the baseline
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    dataset = load_dataset(path.as_uri(), "spec.data.eval", model, ReadOptions(max_rows=max_rows))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    arrays = sum(array.nbytes for array in dataset.arrays.values()) / MB
    return {"file_mb": path.stat().st_size / MB, "rows": len(dataset.arrays["y"]),
            "sequence": dataset.arrays["input_ids"].shape[1], "arrays_mb": arrays,
            "baseline_mb": baseline, "peak_mb": peak, "added_mb": peak - baseline,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.read is not None:
        print(json.dumps(read(options.read, options.max_tokens, options.max_rows)))
        return
    print("| file | MB | rows kept | sequence | arrays MB | baseline MB | peak MB | added MB "
          "| seconds |\n|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for path in generate(Path(scratch), options.megabytes):
            command = [sys.executable, __file__, "--read", str(path),
                       "--max-tokens", str(options.max_tokens)]
            if options.max_rows is not None:
                command += ["--max-rows", str(options.max_rows)]
            figures = json.loads(subprocess.run(command, check=True, capture_output=True,
                                                text=True).stdout.splitlines()[-1])
            print(f"| {path.suffix} | {figures['file_mb']:.1f} | {figures['rows']:,} | "
                  f"{figures['sequence']} | {figures['arrays_mb']:.0f} | "
                  f"{figures['baseline_mb']:.0f} | {figures['peak_mb']:.0f} | "
                  f"{figures['added_mb']:.0f} | {figures['seconds']:.1f} |")


if __name__ == "__main__":
    main()
