"""`prism4m estimate`: hours and GPU-hours to label N images on G GPUs, from measured throughput.

Throughput comes from the ledger of a root that was already labelled (a pilot run: samples /
wall_s per record, i.e. per actor) or, without a root, from the benchmark figures
`label_<name>_img_per_s` of a `make bench` JSON (``bench_file``: `estimate --bench FILE`; by
default a prism4m checkout's benchmarks/results/latest.json, when there is one). The model is
deliberately simple and every assumption is printed with the numbers:

- one actor processes `img_per_s` images per second, as measured, times `speedup` (1 unless
  the user says the target device is faster than the one measured on);
- a labeler asking for `num_gpus` g < 1 (its resources as the pilot's recorded config sets
  them) packs floor(1 / g) actors on a GPU; CPU-only labelers (g = 0) get `cpus_per_gpu` × G
  cores, `num_cpus` per actor;
- actors scale linearly (no contention for disks, network or the object store);
- labelers run one after another and the whole cluster (G GPUs) is held throughout, so
  GPU-hours = hours × G.

A pilot labelled with random weights (its ledger records say ``random_weights``) is
measured all the same, but its rows are flagged ``[RANDOM WEIGHTS]`` and a warning says
why that matters: an untrained model's outputs (how many masks, boxes, caption tokens)
and so its time per image can differ from the real model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from prism4m.errors import UserError
from prism4m.report.throughput import ledger_throughput

# Where `make bench` writes in a prism4m checkout (an editable install); an installed package
# has no such file, and then a run without --root needs --bench.
CHECKOUT_BENCH_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "latest.json"


def bench_path(bench_file: Path | str | None) -> Path:
    """The benchmark JSON to read: ``bench_file``, or the checkout's when it exists; a UserError
    that says what to pass otherwise."""
    if bench_file is not None:
        path = Path(bench_file)
        if not path.is_file():
            raise UserError(f"--bench {bench_file}: no such file (write one with `make bench` in a prism4m checkout)")
        return path
    if CHECKOUT_BENCH_FILE.is_file():
        return CHECKOUT_BENCH_FILE
    raise UserError("no throughput to estimate from: pass --root PILOT (a root a pilot run labelled) or "
                    "--bench FILE (the JSON `make bench` writes, benchmarks/results/latest.json in a prism4m checkout)")


@dataclass
class LabelerEstimate:
    name: str
    img_per_s: float            # per actor, as measured
    source: str                 # where img_per_s comes from
    device: str                 # where it was measured
    num_gpus: float             # per actor (the labeler's resources, as the pilot configured it)
    num_cpus: float
    actors: int
    hours: float
    gpu_hours: float
    random_weights: bool = False  # measured on a model with random weights


@dataclass
class Estimate:
    images: int
    gpus: int
    rows: list[LabelerEstimate]
    missing: list[str] = field(default_factory=list)   # labelers without a measurement
    assumptions: list[str] = field(default_factory=list)

    @property
    def random_weights(self) -> list[str]:
        """Labelers whose measurement came from random weights."""
        return [r.name for r in self.rows if r.random_weights]

    @property
    def hours(self) -> float:
        return sum(r.hours for r in self.rows)

    @property
    def gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.rows)


def default_resources(name: str) -> tuple[float, float]:
    """(num_gpus, num_cpus) per actor from the labeler class; (0, 1) when it cannot be loaded."""
    try:
        from prism4m.labelers.registry import get_labeler_class

        res = get_labeler_class(name).default_resources
        return float(res.num_gpus), float(res.num_cpus)
    except Exception:  # unknown or not importable here: treat as a 1-CPU actor, and say so
        return 0.0, 1.0


def resources_as_run(name: str, config: dict | None) -> tuple[float, float]:
    """(num_gpus, num_cpus) per actor of the labeler configured as the pilot ran it: a setting
    can change them (human_poses' BlazePose backend runs on CPU, VitPose asks for a GPU share).
    The class defaults when no config was recorded or it no longer validates."""
    if config:
        try:
            from prism4m.labelers.registry import make_labeler

            res = make_labeler(name, config).resources
            return float(res.num_gpus), float(res.num_cpus)
        except Exception:  # noqa: BLE001 - a config of another version: the defaults, as without one
            pass
    return default_resources(name)


def measured_rates(root: str | None, bench_file: Path | str | None = None,
                   storage_options: dict | None = None) -> dict[str, tuple[float, str, str]]:
    """labeler → (img_per_s per actor, source description, device)."""
    return {name: m[:3] for name, m in _measurements(root, bench_file, storage_options).items()}


def _measurements(root: str | None, bench_file: Path | str | None = None,
                  storage_options: dict | None = None) -> dict[str, tuple[float, str, str, bool, dict | None]]:
    """labeler → (img_per_s per actor, source description, device, measured with random weights,
    the config it ran with (None from a benchmark file))."""
    out: dict[str, tuple[float, str, str, bool, dict | None]] = {}
    if root is not None:
        from prism4m.contract.store import DatasetStore

        store = DatasetStore(root, storage_options)
        ledgers = {f: store.ledger(f) for f in store.ledger_folders()}
        for folder, t in ledger_throughput(store, ledgers).items():
            if t.kind == "labeler" and t.img_per_s > 0:
                random = any(rec.get("random_weights") for rec in ledgers[folder].values())
                # the last committed (seconds resolve ties: the later shard of one run)
                _, newest = max(ledgers[folder].items(), key=lambda kv: (kv[1].get("committed_at", ""), kv[0]))
                out[t.producer] = (t.img_per_s, f"ledger: {t.records} shards, {t.samples} samples, "
                                                f"{t.wall_s:.1f} actor-s", t.device, random,
                                   newest.get("producer", {}).get("config"))
        return out
    path = bench_path(bench_file)
    bench = json.loads(path.read_text())
    device = str(bench.get("device", "not recorded"))
    for k, v in bench.items():
        if k.startswith("label_") and k.endswith("_img_per_s") and isinstance(v, (int, float)) and v > 0:
            out[k[len("label_"):-len("_img_per_s")]] = (float(v), f"benchmark {path.name}", device, False, None)
    return out


def estimate(images: int, gpus: int, labelers: list[str] | None = None, root: str | None = None, *,
             cpus_per_gpu: int = 8, speedup: float = 1.0, bench_file: Path | str | None = None,
             storage_options: dict | None = None) -> Estimate:
    if images < 0 or gpus < 1:
        raise ValueError("estimate needs --images >= 0 and --gpus >= 1")
    if not speedup > 0:
        raise UserError(f"estimate: --speedup must be above 0 (given {speedup:g})")
    if cpus_per_gpu < 1:
        raise UserError(f"estimate: --cpus-per-gpu must be at least 1 (given {cpus_per_gpu})")
    rates = _measurements(root, bench_file, storage_options)
    names = list(labelers) if labelers else sorted(rates)
    est = Estimate(images, gpus, [])
    for name in names:
        if name not in rates:
            est.missing.append(name)
            continue
        rate, source, device, random, config = rates[name]
        g, c = resources_as_run(name, config)
        if g > 0:
            actors = gpus * max(1, math.floor(1 / g + 1e-9))
        else:
            actors = max(1, math.floor(gpus * cpus_per_gpu / max(c, 1e-9)))
        hours = images / (rate * speedup * actors) / 3600
        est.rows.append(LabelerEstimate(name, rate, source, device, g, c, actors, hours, hours * gpus, random))
    where = f"the ledger of {root}" if root else f"benchmark figures ({bench_path(bench_file)})"
    devices = sorted({r.device for r in est.rows}) or ["-"]
    est.assumptions = [
        f"throughput per actor measured from {where}, on device: {', '.join(devices)}"
        + (" (no device in the records: the run that wrote them; on this project's machines, CPU)"
           if "not recorded" in devices else ""),
        f"measured rate × {speedup:g} applied unchanged on the target"
        + (" — a CPU measurement overstates GPU time; run a pilot on one GPU node and pass --root"
           if speedup == 1 else ""),
        "actors per GPU = floor(1 / num_gpus) from each labeler's resources as configured"
        + (" in the pilot" if root else "") + "; "
        f"CPU-only labelers get {cpus_per_gpu} cores per GPU, num_cpus each",
        "linear scaling over actors (no I/O, network or object-store contention)",
        f"labelers run one after another; the {gpus} GPUs are held throughout (GPU-hours = hours × GPUs)",
    ]
    if est.random_weights:
        est.assumptions.append(f"{', '.join(est.random_weights)} measured with random weights: a real model's "
                               "time per image is taken to be the same")
    return est


def format_estimate(est: Estimate) -> str:
    head = ["labeler", "img/s/actor", "device", "GPU/actor", "CPU/actor", "actors", "hours", "GPU-hours", "source"]
    rows = [[r.name + (" [RANDOM WEIGHTS]" if r.random_weights else ""), f"{r.img_per_s:,.2f}", r.device,
             f"{r.num_gpus:g}", f"{r.num_cpus:g}", r.actors, f"{r.hours:,.2f}", f"{r.gpu_hours:,.1f}", r.source]
            for r in est.rows]
    rows.append(["TOTAL", "", "", "", "", "", f"{est.hours:,.2f}", f"{est.gpu_hours:,.1f}", ""])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = [f"estimate: {est.images:,} images on {est.gpus} GPU(s)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    if est.missing:
        lines.append("no throughput measured for: " + ", ".join(est.missing)
                     + " (label a pilot root with them and pass --root, or run `make bench`)")
    if est.random_weights:
        lines.append(f"warning: {', '.join(est.random_weights)} measured on a pilot labelled with random weights "
                     "[RANDOM WEIGHTS]: an untrained model's outputs (masks, boxes, caption lengths) and so its time "
                     "per image can differ from the real model's; pilot with the real weights before you book GPUs")
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in est.assumptions]
    return "\n".join(lines)
