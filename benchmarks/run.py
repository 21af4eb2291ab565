"""`make bench`: the benchmark table B1..B7 (benchmarks/bench_table.py, which runs bench_hvp, bench_sharpness
and bench_gfs as its B6, B4 and B5 parts), then benchmarks/results/latest.json. Every entry is a ratio measured
in this one run (absolute seconds vary with the machine's load; the load average is recorded with each part).

    .venv/bin/python benchmarks/run.py              # the table, sized to finish in < 20 min on 2 cores
    .venv/bin/python benchmarks/run.py --full       # the table at full size (longer windows and runs)
    .venv/bin/python benchmarks/run.py all          # every bench_*.py (the standalone ones take long)
    .venv/bin/python benchmarks/run.py rod_flow ... # the named benchmarks only
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "threads": 1}


def main(args: list[str]) -> int:
    torch.set_num_threads(1)
    quick = "--full" not in args
    selected = [a for a in args if not a.startswith("--")] or ["table"]
    results = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "torch": torch.__version__,
               "machine": machine(), "quick": quick, "load_avg_start": os.getloadavg(), "benchmarks": {}}
    failed = 0
    start_all = time.perf_counter()
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if "all" not in selected and name not in selected:
            continue
        print(f"\n=== {name} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        start = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            kwargs = {"quick": quick} if "quick" in inspect.signature(module.run).parameters else {}
            out = module.run(**kwargs)
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            out, failed = {"error": traceback.format_exc().splitlines()[-1]}, failed + 1
        out["bench_seconds"] = round(time.perf_counter() - start, 2)
        results["benchmarks"][name] = out
    results["total_seconds"] = round(time.perf_counter() - start_all, 1)
    results["load_avg_end"] = os.getloadavg()
    target = HERE / "results" / "latest.json"
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    os.replace(tmp, target)
    print(f"\nwrote {target} ({results['total_seconds']} s; load average {results['load_avg_end'][0]:.2f})")
    return 1 if failed else 0


def _json_default(x):
    if hasattr(x, "to_dict"):  # pandas frames of the standalone benchmarks
        return x.to_dict(orient="records")
    return float(x)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
