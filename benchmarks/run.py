"""`make bench`: run every benchmarks/bench_*.py (each exposes run() -> dict and prints its own table),
then write benchmarks/results/latest.json. Benchmarks compare ratios measured in the same run."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(selected: list[str]) -> int:
    torch.set_num_threads(1)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "benchmarks": {}}
    failed = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if selected and name not in selected:
            continue
        print(f"\n=== {name} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        start = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            out = module.run()
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            out, failed = {"error": traceback.format_exc().splitlines()[-1]}, failed + 1
        out["bench_seconds"] = round(time.perf_counter() - start, 2)
        results["benchmarks"][name] = out
    target = HERE / "results" / "latest.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float) + "\n")
    os.replace(tmp, target)
    print(f"\nwrote {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
