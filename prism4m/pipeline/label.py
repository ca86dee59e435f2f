"""The label stage: plan (folder, shard) units from the ledger, run labelers as Ray actors.

Planning trusts only the ledger. A unit is skipped when its record matches the labeler's
current producer and the inputs it read; a changed config makes it *stale*, recomputed only
with `update_stale=True` (or everything with `force=True`). Labelers are ordered by their
dependencies (sam_edge after sam_instance, metadata after whatever it counts) and those of
one level and one `group` share an actor: each rgb shard is read and decoded once for all
of them (one GPU, several models).
"""

from __future__ import annotations

import io
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from prism4m.contract.producers import is_stale, owned_by_other, record_producers
from prism4m.contract.store import DatasetStore, Member, content_hash, producer_hash
from prism4m.labelers.base import LabelInput, Labeler
from prism4m.labelers.registry import make_labeler
from prism4m.pipeline.stage import StageSummary, finish_stage, run_stage_units

RGB = "rgb"


class PlanError(ValueError):
    """The requested run cannot be planned (unknown labeler, missing input folder…)."""


@dataclass(frozen=True)
class LabelUnit:
    shard: int
    labelers: tuple[str, ...]          # folders this unit (re)computes, all in one actor group
    inputs: tuple[str, ...]            # other folders to read for them
    retry_invalid: bool = False        # recompute only the invalid samples of the committed shards
    skip_keys: tuple[str, ...] = ()    # samples that killed a worker: invalid (worker_died), not run
    probe_keys: tuple[str, ...] | None = None  # narrowing a worker death: run these, commit nothing


@dataclass
class LabelSummary(StageSummary):
    retried: dict[str, int] = field(default_factory=dict)   # folder → shards whose invalid samples rerun
    owned_skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # folder → {other producer: shards}


def order_levels(labelers: dict[str, Labeler], committed: set[str]) -> list[list[str]]:
    """Topological levels of the selected labelers; unmet hard requirements are an error."""
    level: dict[str, int] = {}

    def depth(name: str, stack: tuple[str, ...] = ()) -> int:
        if name in level:
            return level[name]
        if name in stack:
            raise PlanError(f"labeler dependency cycle: {' -> '.join(stack + (name,))}")
        lab = labelers[name]
        d = 0
        for req in lab.requires:
            if req in labelers:
                d = max(d, depth(req, stack + (name,)) + 1)
            elif req not in committed:
                raise PlanError(f"labeler '{name}' needs '{req}', which is neither committed in this "
                                f"root nor part of this run: add it to the modalities")
        for opt in lab.optional_inputs:
            if opt in labelers:
                d = max(d, depth(opt, stack + (name,)) + 1)
        level[name] = d
        return d

    for n in labelers:
        depth(n)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for n in labelers:
        out[level[n]].append(n)
    return out


class LabelWorker:
    """One Ray actor hosting the labelers of a group; decodes each rgb shard once for all."""

    def __init__(self, store: DatasetStore, specs: list[tuple[type[Labeler], dict]]):
        # The driver's classes (pickled by reference: the worker imports their modules), not
        # their names: looking a name up scans every installed package's entry points (0.03 s
        # in an actor, 0.15 s in a cold process) at each actor start, and the driver already did.
        self.store = store
        self.labelers = {cls.name: cls(cfg) for cls, cfg in specs}

    def ready(self) -> bool:
        for lab in self.labelers.values():
            lab.ensure_setup()  # MissingWeightsError surfaces here, before any shard
        from prism4m.pipeline.ray_env import limit_threads_to_assigned_cpus

        limit_threads_to_assigned_cpus()  # after setup: a labeler may have imported torch
        # Provenance hashes weight files: once per actor, not once per shard.
        self.provenance = {name: lab.model_provenance() for name, lab in self.labelers.items()}
        self.devices = {name: _device_name(lab.device) for name, lab in self.labelers.items()}
        return True

    # A unit in three steps (pipeline/execute.py streams them: with pipeline_depth > 1 the
    # next shard is read and decoded, and the previous one encoded and written, while this
    # one is labelled). Each step's output is exactly what the serial worker computed.
    def prepare(self, unit: LabelUnit) -> dict:
        """Read and decode: the rgb shard, the input folders, the committed members to keep."""
        t0 = time.perf_counter()
        rgb_members = self.store.read_shard(RGB, unit.shard)
        probe = None if unit.probe_keys is None else set(unit.probe_keys)
        images = {m.key: decode_rgb(m) for m in rgb_members if probe is None or m.key in probe}
        inputs = {folder: {m.key: m.data for m in self.store.read_shard(folder, unit.shard) if not m.is_invalid}
                  for folder in unit.inputs}
        kept = {name: ({m.key: m.data for m in self.store.read_shard(name, unit.shard) if not m.is_invalid}
                       if unit.retry_invalid else {}) for name in unit.labelers}
        ledger_records = {f: self.store.read_json(self.store.ledger_path(f, unit.shard))
                          for f in (RGB, *unit.inputs) if f in inputs or f == RGB}
        return {"unit": unit, "t0": t0, "rgb": rgb_members, "images": images, "inputs": inputs, "kept": kept,
                "ledger_records": ledger_records, "decode_s": time.perf_counter() - t0, "probe": probe}

    def compute(self, state: dict) -> dict:
        """Run each labeler over the samples it must (re)compute: the model's turn."""
        unit, images, inputs = state["unit"], state["images"], state["inputs"]
        skip = set(unit.skip_keys)
        state["labelled"] = {}
        for name in unit.labelers:
            lab = self.labelers[name]
            t1 = time.perf_counter()
            wanted = (*lab.requires, *lab.optional_inputs)
            payloads = dict(state["kept"][name])  # retry_invalid: the committed valid members stay
            errs = [{"key": m.key, "reason": "worker_died",
                     "message": f"{lab.name}: this sample killed the label worker; not retried"}
                    for m in state["rgb"] if m.key in skip]
            samples = [LabelInput(m.key, images[m.key], {f: inputs[f][m.key] for f in wanted
                                                        if f in inputs and m.key in inputs[f]})
                       for m in state["rgb"] if m.key in images and m.key not in skip and m.key not in payloads]
            done, run_errs = run_labeler(lab, samples)
            payloads.update((s.key, p) for s, p in zip(samples, done))
            recovered = sum(1 for s in samples if payloads[s.key]) if unit.retry_invalid else 0
            state["labelled"][name] = (payloads, errs + run_errs, recovered, time.perf_counter() - t1)
        return state

    def finish(self, state: dict) -> dict:
        """Encode the tars and commit them, ledger last (nothing for a probe)."""
        unit, rgb_members = state["unit"], state["rgb"]
        if state["probe"] is not None:
            return {"samples": len(state["images"]), "shard": unit.shard, "probe": True}
        outputs, records, errors = {}, {}, {}
        for name in unit.labelers:
            lab = self.labelers[name]
            payloads, errs, _, compute_s = state["labelled"][name]
            wanted = (*lab.requires, *lab.optional_inputs)
            outputs[name] = [Member(m.key, lab.extension, payloads.get(m.key, b"")) for m in rgb_members]
            read = (RGB, *[f for f in wanted if f in state["inputs"]])
            ledger_records = state["ledger_records"]
            records[name] = {
                "producer": lab.producer(),
                "inputs": {f: content_hash(ledger_records[f]) for f in read},
                "model": self.provenance[name],
                # Labels derived from random-weight labels are no more real than their inputs.
                "random_weights": bool(self.provenance[name].get("random_weights", False)) or any(
                    (ledger_records.get(f) or {}).get("random_weights", False) for f in read),
                "device": self.devices[name],
                "wall_s": round(compute_s + state["decode_s"] / len(unit.labelers), 4),
            }
            errors[name] = errs
        self.store.commit_unit(unit.shard, outputs, records, errors)
        return {"samples": len(rgb_members), "shard": unit.shard, "labelers": list(unit.labelers),
                "invalid": sum(len(e) for e in errors.values()),
                "recovered": sum(v[2] for v in state["labelled"].values()),
                "wall_s": time.perf_counter() - state["t0"]}


def _device_name(device: str) -> str:
    """'cpu', or the GPU model for cuda (throughput in the ledger means little without it)."""
    if device.startswith("cuda"):
        try:
            import torch

            return f"cuda:{torch.cuda.get_device_name(0)}"
        except Exception:  # noqa: BLE001
            return device
    return device


def decode_rgb(member: Member) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(member.data)) as img:
        return np.asarray(img.convert("RGB"))


def run_labeler(lab: Labeler, samples: list[LabelInput]) -> tuple[list[bytes], list[dict]]:
    """Label in batches; a batch that raises is retried sample by sample, and a sample that
    still raises (or lacks a required input) becomes an invalid record plus an error line."""
    payloads: list[bytes | None] = [None] * len(samples)
    errors: list[dict] = []
    runnable = []
    for i, s in enumerate(samples):
        missing = [r for r in lab.requires if r not in s.inputs]
        if missing:
            payloads[i] = b""
            errors.append({"key": s.key, "reason": "input_invalid",
                           "message": f"{lab.name}: input {', '.join(missing)} is invalid for this sample"})
        else:
            runnable.append(i)
    bs = max(1, lab.resources.batch_size)
    for start in range(0, len(runnable), bs):
        idx = runnable[start:start + bs]
        try:
            out = lab.label_batch([samples[i] for i in idx])
            _check_outputs(lab, out, len(idx))
            for i, p in zip(idx, out):
                payloads[i] = p
        except Exception:  # noqa: BLE001 - isolate the failing sample(s)
            for i in idx:
                try:
                    out = lab.label_batch([samples[i]])
                    _check_outputs(lab, out, 1)
                    payloads[i] = out[0]
                except Exception as exc:  # noqa: BLE001
                    payloads[i] = b""
                    errors.append({"key": samples[i].key, "reason": "label_exception",
                                   "message": f"{lab.name}: {type(exc).__name__}: {str(exc)[:500]}"})
    return [p if p is not None else b"" for p in payloads], errors


def _check_outputs(lab: Labeler, out, n: int) -> None:
    if not isinstance(out, list) or len(out) != n:
        raise TypeError(f"{lab.name}.label_batch returned {type(out).__name__} of length "
                        f"{len(out) if hasattr(out, '__len__') else '?'} for {n} inputs")
    for p in out:
        if not isinstance(p, (bytes, bytearray)) or len(p) == 0:
            raise TypeError(f"{lab.name}.label_batch must return non-empty bytes per sample")


def plan(store: DatasetStore, labelers: dict[str, Labeler], *, force: bool = False,
         update_stale: bool = False, retry_invalid: bool = False, overwrite_owned: bool = False,
         shards: list[int] | None = None) -> tuple[list[list[LabelUnit]], LabelSummary]:
    """Units to run, level by level; everything else is reported as skipped.

    A committed unit is *stale* when its producer (labeler, config, code version) changed or
    an input it read was recommitted since (producers.is_stale, as `status` decides it); it is
    recomputed only with ``update_stale``. A unit whose input is recomputed in this very run is
    recomputed after it. ``retry_invalid`` reruns just the invalid samples of up-to-date
    shards. A shard another producer wrote (the corpus's own captions) is never replaced
    unless ``overwrite_owned``.
    """
    rgb = store.ledger(RGB)
    if not rgb:
        raise PlanError(f"{store.url}: no committed rgb shards; run `prism4m ingest` first")
    shard_ids = sorted(rgb) if shards is None else [s for s in shards if s in rgb]
    committed_folders = set(store.ledger_folders())
    levels = order_levels(labelers, committed_folders)
    input_folders = {f for lab in labelers.values() for f in (*lab.requires, *lab.optional_inputs)}
    records = {RGB: rgb, **{f: store.ledger(f) for f in (input_folders | set(labelers)) - {RGB}}}
    summary = LabelSummary()
    changing: set[tuple[str, int]] = set()  # (folder, shard) recomputed in this run
    out: list[list[LabelUnit]] = []
    for level in levels:
        todo: dict[tuple[str, int, bool], list[str]] = defaultdict(list)  # (group, shard, retry) → labelers
        for name in level:
            lab = labelers[name]
            producer = lab.producer()
            current = producer_hash(producer)
            reads = (RGB, *lab.requires, *lab.optional_inputs)
            for s in shard_ids:
                rec = records[name].get(s)
                if rec is not None and not overwrite_owned and owned_by_other(rec, producer):
                    other = f"{rec['producer'].get('kind', '?')}:{rec['producer'].get('name', '?')}"
                    owned = summary.owned_skipped.setdefault(name, {})
                    owned[other] = owned.get(other, 0) + 1
                    continue
                upstream_changes = any((f, s) in changing for f in reads)
                retry = False
                if rec is None or force or upstream_changes:
                    run = True
                else:
                    stale = is_stale(rec, current, reads, records, s)
                    run = stale and update_stale
                    if stale and not update_stale:
                        summary.stale_skipped[name] = summary.stale_skipped.get(name, 0) + 1
                    elif not stale:
                        retry = run = retry_invalid and bool(rec.get("invalid"))
                        if retry:
                            summary.retried[name] = summary.retried.get(name, 0) + 1
                        else:
                            summary.skipped[name] = summary.skipped.get(name, 0) + 1
                if run:
                    todo[(lab.config.group, s, retry)].append(name)
                    changing.add((name, s))
                    if not retry:
                        summary.planned[name] = summary.planned.get(name, 0) + 1
        level_units = []
        for (_, s, retry), names in sorted(todo.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
            ins = tuple(sorted({f for n in names for f in (*labelers[n].requires, *labelers[n].optional_inputs)
                                if f in committed_folders or f in labelers}))
            level_units.append(LabelUnit(s, tuple(names), ins, retry_invalid=retry))
        out.append(level_units)
    return out, summary


def label(root: str, modalities: list[str], configs: dict[str, dict] | None = None, *,
          workers: int | None = None, force: bool = False, update_stale: bool = False,
          retry_invalid: bool = False, overwrite_owned: bool = False,
          ray_address: str | None = None, storage_options: dict | None = None,
          show_progress: bool = True, max_retries: int = 2) -> LabelSummary:
    """Label every committed rgb shard of ``root`` with ``modalities`` (output folder names)."""
    configs = configs or {}
    store = DatasetStore(root, storage_options)
    unknown_cfg = set(configs) - set(modalities)
    if unknown_cfg:
        raise PlanError(f"config given for labelers not in this run: {', '.join(sorted(unknown_cfg))}")
    labelers = {name: make_labeler(name, configs.get(name)) for name in modalities}
    from prism4m.pipeline.ray_env import ensure_ray

    joined = ensure_ray(ray_address) if ray_address else 0.0  # name the cluster before planning
    levels, summary = plan(store, labelers, force=force, update_stale=update_stale, retry_invalid=retry_invalid,
                           overwrite_owned=overwrite_owned)
    # What the user asked for is what `status` measures staleness against from now on.
    record_producers(store, {n: (lab.producer(), [RGB, *lab.requires, *lab.optional_inputs])
                             for n, lab in labelers.items() if n not in summary.owned_skipped or overwrite_owned})
    if any(levels):  # a group's resources depend on the cluster it runs on
        summary.ray_start_s = joined + ensure_ray(ray_address)
    for level_units in levels:
        groups: dict[str, list[LabelUnit]] = defaultdict(list)
        for u in level_units:
            groups[labelers[u.labelers[0]].config.group].append(u)
        for units in groups.values():  # one actor group at a time
            group = sorted({n for u in units for n in u.labelers})
            specs = [(type(labelers[n]), labelers[n].config.model_dump(mode="json")) for n in group]
            run_stage_units(store, summary, units, LabelWorker, (store, specs), desc=f"label {'+'.join(group)}",
                            writes=lambda u: u.labelers,
                            keys_of=lambda u: [m.key for m in store.iter_shard(RGB, u.shard)],
                            ray_address=ray_address, workers=workers, max_retries=max_retries,
                            show_progress=show_progress, **_group_resources([labelers[n] for n in group]))
    finish_stage(store, summary, changed=any(levels))  # a no-op rerun rewrites it only when it lags the ledger
    return summary


def _group_resources(group: list[Labeler]) -> dict:
    """What one actor of a group asks for: the most CPUs any member wants and their GPU
    fractions summed (a group too large for every node is refused by run_units)."""
    from prism4m.pipeline.ray_env import cluster_gpus

    res = [lab.resources for lab in group]
    # A GPU fraction on a cluster without GPUs would leave the actors pending forever: run on
    # CPU there (the labeler's device falls back to cpu by itself).
    num_gpus = sum(r.num_gpus for r in res) if cluster_gpus() > 0 else 0.0
    # Streaming keeps a device busy while the CPU reads and writes; without one it only adds
    # threads competing for the actor's CPUs (unless a labeler asks for it).
    depth = max(r.pipeline_depth for r in res) or (3 if num_gpus > 0 else 1)
    return {"num_cpus": max(r.num_cpus for r in res), "num_gpus": num_gpus, "pipeline_depth": depth}
