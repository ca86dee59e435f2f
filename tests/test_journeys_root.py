"""User journeys on a root that already has history: growing it, relative paths, repairs.

Each test drives the `prism4m` CLI in a subprocess (its own local Ray, as a user's shell
would) on roots built by the project's own commands, and asserts what a user would check:
committed shard bytes unchanged, one-line errors naming the setting, aligned folders, a
manifest that matches the ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prism4m.demo import write_photo_corpus
from prism4m.labelers.testing import aligned_report
from prism4m.contract.store import DatasetStore

pytestmark = pytest.mark.timeout(300)

PRISM4M = str(Path(sys.executable).with_name("prism4m"))


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    return subprocess.run([PRISM4M, *args], capture_output=True, text=True, timeout=280, cwd=cwd, env=env)


def committed_bytes(root: str, folders=("rgb", "source", "crop_settings")) -> dict[str, bytes]:
    store = DatasetStore(root)
    return {f"{f}/{s}": store.read_bytes(store.shard_path(f, s)) for f in folders for s in store.ledger(f)}


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def two_corpora(tmp_path) -> tuple[Path, Path]:
    a = write_photo_corpus(tmp_path / "corpus_a", ("astronaut", "chelsea", "coffee"))
    b = write_photo_corpus(tmp_path / "corpus_b", ("rocket", "camera"))
    return a, b


def test_growing_a_root_keeps_its_settings_and_never_touches_committed_shards(two_corpora, tmp_path):
    a, b = two_corpora
    root = str(tmp_path / "ds")
    first = cli("ingest", str(a), root, "--short-side", "96", "--shard-size", "2", "--n-crops", "2", "-q")
    assert first.returncode == 0, first.stderr
    before = committed_bytes(root)
    records_before = {s: r["committed_at"] for s, r in DatasetStore(root).ledger("rgb").items()}
    shutil.rmtree(a)  # the original files are gone: nothing committed may depend on them now

    # A forgotten --short-side does not fall back to 512: the root's own 96 is used.
    grow = cli("ingest", str(b), root, "-q")
    assert grow.returncode == 0, grow.stdout + grow.stderr
    store = DatasetStore(root)
    after = committed_bytes(root)
    assert {k: after[k] for k in before} == before  # committed shards byte for byte
    assert {s: r["committed_at"] for s, r in store.ledger("rgb").items() if s in records_before} == records_before
    new_shards = sorted(set(store.ledger("rgb")) - set(records_before))
    assert new_shards, "the new source added shards"
    for s in new_shards:
        for m in store.read_shard("source", s):
            assert min(json.loads(m.data)["width"], json.loads(m.data)["height"]) == 96
    aligned_report(store)

    # An explicitly different setting is refused in one line naming it and both values.
    clash = cli("ingest", str(b), root, "--short-side", "128", "-q")
    assert clash.returncode == 2
    line = error_line(clash)
    assert "short_side" in line and "96" in line and "128" in line, line
    assert committed_bytes(root) == after

    # --force with the original source gone is refused per shard, naming it; nothing is lost.
    forced = cli("ingest", str(b), root, "--short-side", "128", "--force", "-q")
    assert forced.returncode == 1, forced.stdout + forced.stderr
    refused = [ln for ln in forced.stdout.splitlines() if "REFUSED" in ln]
    assert len(refused) == len(records_before), forced.stdout
    assert all("corpus_a" in ln for ln in refused), refused
    after_force = committed_bytes(root)
    assert {k: after_force[k] for k in before} == before
    st = cli("status", root, "--json")
    assert st.returncode == 0, st.stderr
    folders = {f["folder"]: f for f in json.loads(st.stdout)["folders"]}
    assert folders["rgb"]["samples"] == 5 and folders["rgb"]["invalid"] == 0


def test_appending_a_captioned_source_adds_an_aligned_caption_folder(two_corpora, tmp_path):
    a, b = two_corpora
    for img in b.iterdir():  # caption sidecars: NAME.txt next to NAME.jpg
        img.with_suffix(".txt").write_text(f"a photo of {img.stem}")
    root = str(tmp_path / "ds")
    assert cli("ingest", str(a), root, "--short-side", "64", "--shard-size", "2", "-q").returncode == 0
    before = committed_bytes(root)
    old_shards = sorted(DatasetStore(root).ledger("rgb"))
    grow = cli("ingest", str(b), root, "-q")
    assert grow.returncode == 0, grow.stdout + grow.stderr
    store = DatasetStore(root)
    after = committed_bytes(root)
    assert {k: after[k] for k in before} == before
    captions = store.ledger("caption")
    assert sorted(captions) == sorted(store.ledger("rgb"))  # every shard, old ones included
    for s in store.ledger("rgb"):
        members = store.read_shard("caption", s)
        assert [m.key for m in members] == [m.key for m in store.read_shard("rgb", s)]
        if s in old_shards:  # no caption in their source: explicit invalid (empty) records
            assert all(m.is_invalid for m in members) and len(captions[s]["invalid"]) == len(members)
        else:
            assert [m.data.decode() for m in members] == [
                f"a photo of {json.loads(x.data)['source_id'].rsplit('/', 1)[-1].rsplit('.', 1)[0]}"
                for x in store.read_shard("source", s)]
    aligned_report(store)


def test_relative_root_and_source_mean_the_same_on_every_worker(tmp_path):
    write_photo_corpus(tmp_path / "photos", ("astronaut", "coffee"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ing = cli("ingest", "photos", "ds", "--short-side", "64", "-q", cwd=str(tmp_path))
    assert ing.returncode == 0, ing.stdout + ing.stderr
    lab = cli("label", "ds", "-m", "canny_edge", "-q", cwd=str(tmp_path))
    assert lab.returncode == 0, lab.stdout + lab.stderr
    store = DatasetStore(str(tmp_path / "ds"))
    assert len(store.ledger("canny_edge")) == len(store.ledger("rgb")) == 1
    assert not (elsewhere / "ds").exists()
    # The root's manifest names absolute sources, usable from any directory.
    assert store.read_manifest()["ingest"]["sources"] == [str(tmp_path / "photos")]


def test_any_command_repairs_a_manifest_a_kill_left_behind_and_cleans_orphans(photo_root, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(photo_root, root)
    store = DatasetStore(root)
    manifest = store.read_manifest()
    # A kill after the last commit, before the manifest was rewritten: the manifest lacks the
    # new folder, and a writer's staged file is left in _tmp/.
    manifest["folders"].pop("canny_edge")
    store.write_manifest(manifest)
    orphan = Path(store.p("_tmp", "orphan-from-a-killed-writer"))
    orphan.write_bytes(b"half a shard")
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    live = Path(store.p("_tmp", "a-live-writer-s-file"))
    live.write_bytes(b"being written")

    rerun = cli("label", root, "-m", "canny_edge", "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert "canny_edge" in store.read_manifest()["folders"]
    assert store.read_manifest()["folders"]["canny_edge"]["shards"] == len(store.ledger("rgb"))
    assert not orphan.exists() and live.exists()  # a fresh file may belong to a running writer


def test_a_labeler_never_replaces_the_corpus_own_captions_and_status_agrees_on_stale(tmp_path):
    photos = write_photo_corpus(tmp_path / "photos", ("astronaut", "coffee"))
    for img in photos.iterdir():
        img.with_suffix(".txt").write_text("the corpus's own caption")
    root = str(tmp_path / "ds")
    assert cli("ingest", str(photos), root, "--short-side", "64", "-q").returncode == 0
    assert cli("label", root, "-m", "canny_edge", "-q").returncode == 0
    store = DatasetStore(root)
    captions_before = committed_bytes(root, ("caption",))

    # The caption labeler is asked to update stale shards: the corpus's captions are kept,
    # and the output says why (no model is even loaded: there is nothing to do).
    lab = cli("label", root, "-m", "caption", "--update-stale", "-c", "caption.checkpoint=/nonexistent", "-q")
    assert lab.returncode == 0, lab.stdout + lab.stderr
    assert "--overwrite-owned" in lab.stdout and "ingest:source_caption" in lab.stdout, lab.stdout
    assert committed_bytes(root, ("caption",)) == captions_before

    # A new labeler config without --update-stale: label and status both call the shards stale.
    lab = cli("label", root, "-m", "canny_edge", "-c", "canny_edge.low=40", "-c", "canny_edge.high=120", "-q")
    assert lab.returncode == 0, lab.stderr
    assert "stale" in lab.stdout and "canny_edge=1" in lab.stdout, lab.stdout
    st = json.loads(cli("status", root, "--json").stdout)
    canny = next(f for f in st["folders"] if f["folder"] == "canny_edge")
    assert canny["stale"] == len(store.ledger("rgb")) and canny["committed"] == 0
    assert cli("label", root, "-m", "canny_edge", "-c", "canny_edge.low=40", "-c", "canny_edge.high=120",
               "--update-stale", "-q").returncode == 0
    st = json.loads(cli("status", root, "--json").stdout)
    canny = next(f for f in st["folders"] if f["folder"] == "canny_edge")
    assert canny["stale"] == 0 and canny["committed"] == len(store.ledger("rgb"))


def test_chroma_subsampling_is_a_setting_and_auto_keeps_earlier_roots_current(tmp_path):
    from PIL import Image, JpegImagePlugin

    photos = write_photo_corpus(tmp_path / "photos", ("astronaut", "coffee"))
    sampling = {}
    for mode in ("auto", "4:2:0"):
        root = str(tmp_path / mode.replace(":", ""))
        args = ["ingest", str(photos), root, "--short-side", "64", "-q"]
        assert cli(*args, *(["--jpeg-subsampling", mode] if mode != "auto" else [])).returncode == 0
        member = DatasetStore(root).read_shard("rgb", 0)[0]
        sampling[mode] = JpegImagePlugin.get_sampling(Image.open(__import__("io").BytesIO(member.data)))
        # the producer of an `auto` root is the one roots made before the setting existed had
        producer = DatasetStore(root).ledger("rgb")[0]["producer"]["config"]
        assert ("jpeg_subsampling" in producer) == (mode != "auto")
    assert sampling == {"auto": 0, "4:2:0": 2}  # PIL: 0 = 4:4:4 (quality 90), 2 = 4:2:0
