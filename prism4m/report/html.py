"""`prism4m report ROOT -o DIR`: a static HTML report of a dataset root that opens from disk.

DIR/index.html plus DIR/assets/*.png|jpg (relative links, no server, no CDN, no JavaScript
needed to read it). Sections:

- overview: the status table (committed / stale / missing / failed per folder), and a loud
  banner when any ledger record was produced with random weights;
- gallery: N samples drawn with `seed`, every committed folder rendered by
  prism4m.report.render (invalid zero-byte members shown as such, with their error reason),
  and, for each tokenizer directory given, its reconstruction (prism4m.report.recon);
- statistics: coverage, value distributions, codebook usage (prism4m.report.stats);
- throughput: samples / wall_s per ledger record (prism4m.report.throughput);
- provenance: producer, config, model and weights of each folder;
- errors: per-sample error lines (with keys), failed units, ingest's refused inputs.

Only committed shards are read (through DatasetStore), so a report of a root being written
shows exactly what a reader would see.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

from prism4m.contract.members import decode_npy
from prism4m.contract.modalities import MODALITIES
from prism4m.contract.store import DatasetStore, Member
from prism4m.errors import UserError
from prism4m.report.charts import bar_chart
from prism4m.report.recon import load_tokenizers, reconstruct
from prism4m.report.render import Panel, SampleContext, render_member
from prism4m.report.stats import folder_stats
from prism4m.report.throughput import ledger_throughput

esc = html.escape

# Gallery/statistics order: the modality table's (ingest's folders, dense labels, features,
# instances and sequences), then folders it does not know, then tokens.
FOLDER_ORDER = tuple(dict.fromkeys(m.label_folder for m in MODALITIES.values()))
MAX_SIDE = 512          # gallery images are for eyeballing; keep the report light
MAX_ERROR_ROWS = 500


def folder_sort_key(folder: str) -> tuple:
    base = folder.split("~")[0].split("@")[0]
    if base.startswith("tok_"):
        return (2, folder)
    return (0, FOLDER_ORDER.index(base), folder) if base in FOLDER_ORDER else (1, folder)


def is_random(rec: dict) -> bool:
    """Ingest and labelers write random_weights at the top; producers and models may carry it too."""
    return bool(rec.get("random_weights") or (rec.get("producer") or {}).get("random_weights")
                or (rec.get("model") or {}).get("random_weights"))


def pick_samples(rgb_ledger: dict[int, dict], n: int, seed: int) -> list[tuple[int, int]]:
    """(shard, position) of n samples drawn uniformly without replacement, in dataset order."""
    shards = sorted(rgb_ledger)
    sizes = np.array([rgb_ledger[s]["n_samples"] for s in shards], dtype=np.int64)
    total = int(sizes.sum())
    if total == 0 or n <= 0:
        return []
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    where = np.searchsorted(starts, flat, side="right") - 1
    return [(shards[w], int(i - starts[w])) for w, i in zip(where, flat)]


class _Shards:
    """The members the gallery needs, one shard in memory at a time (real shards hold GBs)."""

    def __init__(self, store: DatasetStore, ledgers: dict[str, dict[int, dict]], picks: list[tuple[int, int]]):
        self.store, self.ledgers = store, ledgers
        self.wanted: dict[int, set[int]] = {}
        for shard, pos in picks:
            self.wanted.setdefault(shard, set()).add(pos)
        self.cache: dict[tuple[str, int], dict[int, Member]] = {}

    def members(self, folder: str, shard: int) -> dict[int, Member] | None:
        """position → member for the picked positions of ``shard``; None when not committed."""
        rec = self.ledgers.get(folder, {}).get(shard)
        if rec is None:
            return None
        if (folder, shard) not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k[1] == shard}  # drop other shards
            keep = self.wanted.get(shard, set())
            self.cache[(folder, shard)] = {i: m for i, m in enumerate(self.store.iter_shard(folder, shard, record=rec))
                                           if i in keep}
        return self.cache[(folder, shard)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _save(img: Image.Image, assets: Path, stem: str) -> str:
    if max(img.size) > MAX_SIDE:
        img = img.copy()
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    photo = img.mode == "RGB" and img.width * img.height > 40_000
    name = f"{stem}.{'jpg' if photo else 'png'}"
    if photo:
        img.save(assets / name, quality=88)
    else:
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(assets / name)
    return f"assets/{name}"


def _card(title: str, panel: Panel, src: str | None, extra_class: str = "", badge: str = "") -> str:
    cls = "card" + (" invalid" if panel.invalid else "") + (f" {extra_class}" if extra_class else "")
    img = f"<a href='{src}'><img src='{src}' alt='{esc(title)}'></a>" if src else ""
    return (f"<div class='{cls}'><div class='mod'>{esc(title)}{badge}</div>{img}"
            f"<div class='cap'>{panel.html}</div></div>")


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='grid {cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def build_report(root: str, out_dir: str | Path, n_samples: int = 16, tokenizers: list[str] | None = None,
                 seed: int = 0, *, storage_options: dict | None = None, stats_shards: int = 4,
                 stats_members: int = 512) -> Path:
    """Write DIR/index.html (+ DIR/assets/) for the dataset at ``root``; returns the index path."""
    from prism4m.report.status import dataset_status, format_status

    store = DatasetStore(root, storage_options)
    status = dataset_status(root, storage_options)  # first: a root that is none writes nothing
    out = Path(out_dir)
    if store.url == str(out.resolve()):
        raise UserError(f"-o {out_dir}: that is the dataset root; the report (index.html, assets/) goes in a "
                        f"directory of its own")
    assets = out / "assets"
    if assets.exists():
        shutil.rmtree(assets)  # only our own asset folder: stale images must not linger
    assets.mkdir(parents=True)

    ledgers = {f: store.ledger(f) for f in store.ledger_folders()}
    ledgers = {f: r for f, r in ledgers.items() if r}
    folders = sorted(ledgers, key=folder_sort_key)
    rgb = ledgers.get("rgb", {})
    dataset_samples = sum(r["n_samples"] for r in rgb.values())
    random_folders = [f for f in folders if any(is_random(r) for r in ledgers[f].values())]

    errors = {f: store.read_errors(f) for f in folders}
    reason_of = {(f, e.get("key")): e for f, lines in errors.items() for e in lines}

    parts: list[str] = []
    parts.append(_overview(store, status, format_status, dataset_samples, folders, random_folders))
    parts.append(_gallery(store, ledgers, folders, n_samples, seed, tokenizers or [], assets,
                          reason_of, set(random_folders)))
    parts.append(_statistics(store, ledgers, folders, dataset_samples, stats_shards, stats_members))
    parts.append(_throughput(store, ledgers))
    parts.append(_provenance(store, ledgers, folders))
    parts.append(_errors(store, folders, errors, status))
    banner = ""
    if random_folders:
        banner = ("<div id='random-weights' class='banner'>RANDOM WEIGHTS — "
                  f"{esc(', '.join(random_folders))} came from random-weight models (a smoke run). "
                  "These are NOT real pseudo-labels; do not train on them.</div>")
    index = out / "index.html"
    index.write_text(_page(store.url, banner, "".join(parts)), encoding="utf-8")
    return index


# ----------------------------------------------------------------------------- sections
def _overview(store, status, format_status, dataset_samples, folders, random_folders) -> str:
    manifest = store.read_manifest()
    text = format_status(status)
    man = json.dumps(manifest, indent=1, default=str) if manifest else "(no prism4m.json)"
    return (f"<section id='overview'><h2>Overview</h2><p>{dataset_samples:,} samples in "
            f"{status.rgb_shards} rgb shards; {len(folders)} committed folders"
            f"{'; <b class=warn>random-weight folders: ' + esc(', '.join(random_folders)) + '</b>' if random_folders else ''}"
            f".</p><pre class='status'>{esc(text)}</pre>"
            f"<details><summary>manifest (prism4m.json)</summary><pre>{esc(man[:20000])}</pre></details></section>")


def _gallery(store, ledgers, folders, n, seed, tok_dirs, assets, reason_of, random_folders) -> str:
    toks, notes = load_tokenizers(tok_dirs) if tok_dirs else ([], [])
    for note in notes:  # in the report too; said here so that a mistyped -t is not missed
        print(f"warning: {note}", file=sys.stderr, flush=True)
    picks = pick_samples(ledgers.get("rgb", {}), n, seed)
    shards = _Shards(store, ledgers, picks)
    rows = []
    for si, (shard, pos) in enumerate(picks):
        rgb_m = shards.members("rgb", shard)[pos]
        key = rgb_m.key
        ctx = SampleContext(key)
        try:
            ctx.rgb = Image.open(io.BytesIO(rgb_m.data)).convert("RGB")
        except Exception:
            pass
        crop_m = (shards.members("crop_settings", shard) or {}).get(pos)
        if crop_m is not None and crop_m.data:
            ctx.crops = decode_npy(crop_m.data)
        cards = []
        members: dict[str, Member] = {}
        for folder in folders:
            ms = shards.members(folder, shard)
            if ms is None:
                cards.append(_card(folder, Panel(None, "<i>shard not committed</i>"), None, "absent"))
                continue
            m = ms.get(pos)
            if m is None or m.key != key:  # Invariant 1 says this cannot happen; show it if it does
                cards.append(_card(folder, Panel(None, "<b>misaligned</b>: key differs from rgb"), None, "invalid"))
                continue
            members[folder] = m
            panel = render_member(folder, m.ext, m.data, ctx)
            if panel.invalid:
                err = reason_of.get((folder, key))
                if err:
                    panel.html += f"<br>{esc(err.get('reason', '?'))}: {esc(str(err.get('message', ''))[:160])}"
            src = _save(panel.image, assets, f"{si:03d}_{_safe(folder)}") if panel.image is not None else None
            badge = " <span class='rw'>random weights</span>" if folder in random_folders else ""
            cards.append(_card(folder, panel, src, badge=badge))
        hw = (ctx.rgb.height, ctx.rgb.width) if ctx.rgb is not None else (0, 0)
        for ti, lt in enumerate(toks):
            for folder in lt.folders:
                m = members.get(folder)
                if m is None and len(lt.folders) > 1:
                    continue  # a text tokenizer: only the sequence folders this root has
                if m is None or m.is_invalid:
                    panel = Panel(None, f"no valid {esc(folder)} member")
                else:
                    panel = reconstruct(lt, folder, m.data, ctx.crops, hw)
                src = (_save(panel.image, assets, f"{si:03d}_recon{ti}_{_safe(folder)}")
                       if panel.image is not None else None)
                cards.append(_card(f"⟲ {lt.label} ← {folder}", panel, src, "recon"))
        rows.append(f"<div class='sample'><h3>{esc(key)} <small>shard {shard}, #{pos}</small></h3>"
                    f"<div class='cards'>{''.join(cards)}</div></div>")
    note = "".join(f"<p class='note'>{esc(x)}</p>" for x in notes)
    if tok_dirs and toks:
        note += "<p class='note'>Reconstructions (⟲): crop_settings row 0 encoded and decoded by each tokenizer.</p>"
    return (f"<section id='gallery'><h2>Gallery</h2><p>{len(picks)} samples drawn with seed {seed}; "
            f"click an image for full size.</p>{note}{''.join(rows) or '<p>no committed rgb shard</p>'}</section>")


def _statistics(store, ledgers, folders, dataset_samples, max_shards, max_members) -> str:
    cards = []
    for folder in folders:
        st = folder_stats(store, folder, ledgers[folder], dataset_samples, max_shards, max_members)
        cov = st.coverage
        charts = "".join(bar_chart(c) for c in st.charts)
        cb = ""
        if st.codebook:
            c = st.codebook
            cb = "<table class='kv'>" + "".join(
                f"<tr><th>{esc(k)}</th><td>{esc(f'{v:.3g}' if isinstance(v, float) else str(v))}</td></tr>"
                for k, v in c.items()) + "</table>"
        if st.table:
            cb += f"<p>{esc(st.table_title)}</p><table class='kv'>" + "".join(
                f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in st.table.items()) + "</table>"
        notes = "".join(f"<p class='note'>{esc(x)}</p>" for x in st.notes[:5])
        cards.append(f"<div class='stat'><h3>{esc(folder)}</h3>"
                     f"<div class='cov'><div style='width:{cov * 100:.1f}%'></div></div>"
                     f"<p>coverage <b>{cov:.1%}</b> ({st.valid:,} valid / {dataset_samples:,} samples); "
                     f"{st.shards} shards, {st.invalid:,} invalid; charts from {st.sampled:,} members</p>"
                     f"{charts}{cb}{notes}</div>")
    return (f"<section id='statistics'><h2>Statistics</h2><p>Coverage from the ledger (all shards); "
            f"distributions from up to {max_shards} evenly spaced shards, at most {max_members} members "
            f"per folder.</p><div class='stats'>{''.join(cards)}</div></section>")


def _throughput(store, ledgers) -> str:
    rows = []
    for folder, t in sorted(ledger_throughput(store, ledgers).items(), key=lambda x: folder_sort_key(x[0])):
        r = t.rates or [0.0]
        rows.append([esc(folder), esc(t.kind), esc(t.producer), t.records, f"{t.samples:,}", f"{t.wall_s:,.2f}",
                     f"<b>{t.img_per_s:,.2f}</b>", f"{min(r):,.2f} / {median(r):,.2f} / {max(r):,.2f}",
                     esc(t.device)])
    head = ["folder", "kind", "producer", "records", "samples", "actor-seconds", "samples/s (pooled)",
            "per record min / median / max", "device"]
    return ("<section id='throughput'><h2>Throughput</h2><p>From the ledger: each record is one actor on "
            "one shard, so these are per-actor rates (samples / wall_s), on the device that ran them. "
            "<code>prism4m estimate</code> turns them into hours and GPU-hours.</p>"
            f"{_table(head, rows)}</section>")


def _provenance(store, ledgers, folders) -> str:
    rows = []
    for folder in folders:
        recs = ledgers[folder].values()
        producers = Counter(r.get("producer_hash", "?") for r in recs)
        newest = max(recs, key=lambda r: r.get("committed_at", ""))
        p = newest.get("producer", {})
        model = newest.get("model") or {}
        cfg = p.get("config")
        model_txt = ", ".join(f"{k}={str(v)[:24]}" for k, v in model.items()
                              if k in ("model_id", "weights_sha256", "model_class")) or "-"
        rw = any(is_random(r) for r in recs)
        times = sorted(r.get("committed_at", "") for r in recs)
        rows.append([esc(folder), esc(f"{p.get('kind', '?')}:{p.get('name', '?')}"), esc(str(p.get("class", "-"))),
                     esc(str(p.get("code_version", "-"))),
                     f"<code>{esc(json.dumps(cfg, sort_keys=True)[:300]) if cfg is not None else '-'}</code>",
                     esc(model_txt), "<b class='warn'>YES</b>" if rw else "no",
                     f"{len(producers)}" + (" (mixed!)" if len(producers) > 1 else ""),
                     esc(f"{times[0]} … {times[-1]}" if times and times[0] != times[-1] else (times[0] if times else ""))])
    head = ["folder", "producer", "class", "code", "config", "model", "random weights", "producers", "committed"]
    return f"<section id='provenance'><h2>Provenance</h2>{_table(head, rows)}</section>"


def _errors(store, folders, errors, status) -> str:
    rows, counts = [], Counter()
    ingest = store.read_errors("ingest")  # scan.jsonl / source.jsonl: inputs that never became samples
    for folder, lines in [*errors.items(), ("ingest", ingest)]:
        for e in lines:
            counts[(folder, e.get("reason", "?"))] += 1
            if len(rows) < MAX_ERROR_ROWS:
                key = e.get("key") or e.get("source") or e.get("uri") or "-"
                rows.append([esc(folder), f"<code>{esc(str(key))}</code>", esc(str(e.get("reason", "?"))),
                             esc(str(e.get("message", ""))[:300])])
    total = sum(counts.values())
    summary = _table(["folder", "reason", "count"], [[esc(f), esc(r), c] for (f, r), c in sorted(counts.items())])
    failed = _table(["folder", "shard", "reason", "message"],
                    [[esc(f["folder"]), f["shard"], esc(f["reason"]), esc(f["message"][:300])] for f in status.failures])
    more = f"<p>… {total - len(rows)} more lines not shown.</p>" if total > len(rows) else ""
    return (f"<section id='errors'><h2>Errors</h2><p>{total:,} per-sample error lines; "
            f"{len(status.failures)} failed units.</p>{summary if counts else '<p>No per-sample errors.</p>'}"
            f"{('<h3>Failed units</h3>' + failed) if status.failures else ''}"
            f"{('<h3>Error lines</h3>' + _table(['folder', 'key / source', 'reason', 'message'], rows, 'errors')) if rows else ''}"
            f"{more}</section>")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d2733;color:#fff;padding:10px 20px}header h1{margin:0;font-size:20px}
nav a{color:#9cf;margin-right:14px}
section{padding:8px 20px}h2{border-bottom:2px solid #ccd;padding-bottom:4px}
.banner{background:#c00;color:#fff;font-weight:bold;font-size:20px;padding:14px 20px}
.warn{color:#c00}.rw{background:#c00;color:#fff;font-size:10px;padding:1px 4px;border-radius:3px}
.sample{margin:0 0 18px}.sample h3{margin:6px 0;font-family:monospace}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;width:220px;overflow:hidden}
.card img{max-width:208px;max-height:200px;display:block;image-rendering:auto}
.card.invalid{border:2px dashed #c00;background:#fee}.card.recon{background:#eef6ff}
.card.absent{opacity:.5}.mod{font-weight:bold;font-size:12px;margin-bottom:4px}
.cap{font-size:11px;color:#444;word-wrap:break-word}.caption{font-style:italic;font-size:13px;color:#222}
.sw{display:inline-block;width:10px;height:10px;margin-right:3px;border:1px solid #999;vertical-align:middle}
.sw.big{width:18px;height:14px;margin:0}.pal .k{display:inline-block;width:12px;font-size:10px}
table.kv th{text-align:left;font-weight:normal;color:#666;padding-right:6px}table.kv{font-size:11px}
table.grid{border-collapse:collapse;font-size:12px}table.grid td,table.grid th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
table.grid th{background:#eef}
.stats{display:flex;flex-wrap:wrap;gap:10px}.stat{background:#fff;border:1px solid #ddd;padding:6px 10px;width:340px}
.stat h3{margin:2px 0}.cov{height:8px;background:#eee}.cov div{height:8px;background:#2a9d4a}
.chart{margin:4px 0}.chart figcaption{font-size:11px;color:#555}pre{font-size:11px;overflow:auto}
.note{color:#835;font-size:12px}
"""

# Counts images that decoded into data attributes (read by the browser test and by curious humans).
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
  var g = document.querySelector('#gallery img');
  if (g) { var r = g.getBoundingClientRect();
    document.body.setAttribute('data-first-gallery-img',
      [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height].map(Math.round).join(',')); }
});
"""


def _page(root: str, banner: str, body: str) -> str:
    nav = "".join(f"<a href='#{s}'>{s}</a>" for s in
                  ("overview", "gallery", "statistics", "throughput", "provenance", "errors"))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>prism4m report — {esc(root)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{banner}"
            f"<header><h1>prism4m dataset report</h1><div>{esc(root)}</div><nav>{nav}</nav></header>"
            f"{body}</body></html>")
