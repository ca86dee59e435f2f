"""`make bench`: run every benchmarks/bench_*.py in its own process, merge their figures.

Each module defines `run(workdir: str) -> dict` of named figures. Results are merged into one
flat JSON (benchmarks/results/latest.json); each module's own figures also go to
results/<module>.json. A module that fails is recorded as `<module>_error` and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_module(name: str, workdir: Path, timeout: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import {name} as m; "
            f"print('@@RESULT@@' + json.dumps(m.run({str(workdir)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sys.stderr.write(proc.stderr[-4000:])
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-1500:]}")


DEFAULT_OUT = HERE / "results" / "latest.json"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", nargs="*", help="module names (e.g. bench_foundation)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--quick", action="store_true", help="every bench at a tenth of its size (PRISM4M_BENCH_SCALE)")
    args = ap.parse_args()
    if args.quick:
        os.environ.setdefault("PRISM4M_BENCH_SCALE", "0.1")
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))  # gpu_check.py runs on its own (make gpu-check)
    if args.only:
        modules = [m for m in modules if m in args.only]
    out_path = Path(args.out)
    merged = json.loads(out_path.read_text()) if out_path.exists() else {}
    merged.update({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version()})
    for name in modules:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as wd:
            try:
                figures = run_module(name, Path(wd), args.timeout)
                merged.pop(f"{name}_error", None)
            except Exception as exc:  # noqa: BLE001 - record and go on with the others
                figures = {f"{name}_error": str(exc)[-500:]}
        figures[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(figures, indent=1), flush=True)
        previous = HERE / "results" / f"{name}.json"
        if previous.exists():  # a figure this bench no longer reports must not linger in latest.json
            for key in set(json.loads(previous.read_text())) - set(figures):
                merged.pop(key, None)
        merged.update(figures)
        (HERE / "results").mkdir(exist_ok=True)
        if out_path.resolve() == DEFAULT_OUT.resolve():  # the committed per-bench files belong to the full
            # figures; a quick or side run (--out elsewhere) must not overwrite them
            (HERE / "results" / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
        merged["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out_path.write_text(json.dumps(merged, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
