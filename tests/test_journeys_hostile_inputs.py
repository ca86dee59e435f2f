"""User journeys with hostile inputs: `prism4m ingest SRC ROOT` on folders and tars a real
corpus contains. Every input file ends as a sample or as an error line naming it with a
reason code; one bad file or member never costs the good ones, and nothing hangs.

Run through the CLI (typer's runner, in this process, on the session's local Ray); the
assertions are what a user checks: the exit code, the keys and captions in the committed
shards, and the lines of `_errors/ingest/scan.jsonl` (inputs refused before planning) and
`_errors/rgb/*.jsonl` (refused while decoding).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hostile import big_jpeg, jpeg_bytes, make_fifo, make_socket, png_bomb, tar_bytes, write_img2dataset_output
from prism4m.cli import app
from prism4m.contract.store import DatasetStore

runner = CliRunner()
SMALL = ["--short-side", "48", "--n-crops", "1", "-q"]


def ingest_cli(src: Path, root: Path, *extra: str):
    result = runner.invoke(app, ["ingest", str(src), str(root), *SMALL, *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def scan_errors(root: Path) -> list[dict]:
    path = root / "_errors" / "ingest" / "scan.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def decode_errors(root: Path) -> list[dict]:
    return [json.loads(x) for p in sorted((root / "_errors" / "rgb").glob("*.jsonl")) for x in p.read_text().splitlines()]


def samples(root: Path) -> dict[str, dict]:
    """source_id → the sample's source record (and its caption, when the root has captions)."""
    store = DatasetStore(str(root))
    out = {}
    for shard in sorted(store.ledger("rgb")):
        captions = ({m.key: m.data.decode() for m in store.read_shard("caption", shard)}
                    if shard in store.ledger("caption") else {})
        for m in store.read_shard("source", shard):
            rec = json.loads(m.data)
            out[rec["source_id"]] = {**rec, "caption": captions.get(m.key)}
    return out


# ---------------------------------------------------------------------- special files in a folder
# An opened named pipe blocks its reader (a Ray worker) forever, and the driver's wait on it is
# not interrupted by a signal: the thread method bounds the failure (it ends the test run).
@pytest.mark.timeout(120, method="thread")
def test_named_pipe_and_socket_in_the_folder_are_refused_not_read(tmp_path, ray_session):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg_bytes(1))
    (src / "captioned.jpg").write_bytes(jpeg_bytes(2))
    make_fifo(src / "stream.jpg")            # an image name: the reader would block on it
    make_fifo(src / "captioned.txt")         # a caption sidecar that is a pipe
    sock = make_socket(src / "agent.png")
    try:
        root = tmp_path / "ds"
        ingest_cli(src, root)
    finally:
        sock.close()
    got = samples(root)
    assert set(got) == {"good.jpg", "captioned.jpg"}
    errors = {Path(e["source"]).name: e for e in scan_errors(root)}
    assert set(errors) == {"stream.jpg", "captioned.txt", "agent.png"}, errors
    for name, what in (("stream.jpg", "named pipe"), ("captioned.txt", "named pipe"), ("agent.png", "socket")):
        assert errors[name]["reason"] == "unsupported"
        assert name in errors[name]["message"] and what in errors[name]["message"], errors[name]
    status = runner.invoke(app, ["status", str(root), "--json"])
    assert json.loads(status.output)["source_errors"] == {"unsupported": 3}


def test_missing_source_is_one_line_naming_it(tmp_path):
    from prism4m.errors import UserError
    from prism4m.pipeline.sources import list_source

    missing = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(UserError, match="no such file or directory") as exc:
        list_source(missing)
    assert missing in str(exc.value) and "\n" not in str(exc.value)
    result = runner.invoke(app, ["ingest", missing, str(tmp_path / "ds"), "-q"])
    assert result.exit_code == 2 and f"error: source {missing}: no such file or directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert not (tmp_path / "ds").exists()


@pytest.mark.timeout(60, method="thread")
def test_source_that_is_a_named_pipe_is_refused_before_reading(tmp_path):
    pipe = make_fifo(tmp_path / "corpus.tar")
    result = runner.invoke(app, ["ingest", str(pipe), str(tmp_path / "ds"), "-q"])
    assert result.exit_code == 2 and f"error: source {pipe}: a named pipe" in result.output


# ---------------------------------------------------------------------- a tar with bad members
GOOD_A, GOOD_B, SECOND_B = jpeg_bytes(10), jpeg_bytes(11), jpeg_bytes(12)
TAR_MEMBERS = [
    ("a.jpg", GOOD_A), ("a.txt", b"a cat on a chair"),
    ("../evil.jpg", jpeg_bytes(13)),                       # escapes the archive
    ("/tmp/prism4m-absolute.jpg", jpeg_bytes(14)),         # absolute path
    ("sym.jpg", "symlink", "/etc/passwd"),
    ("hard.jpg", "hardlink", "a.jpg"),
    ("pipe.jpg", "fifo"),
    ("b.jpg", GOOD_B), ("b.txt", b"a dog"),
    ("b.jpg", SECOND_B),                                   # the same name again, other bytes
    ("weird..name.jpg", jpeg_bytes(15)),                   # WebDataset: key 'weird', extension '.name.jpg'
    ("c.JPG", jpeg_bytes(16)),
]


@pytest.fixture(scope="module")
def tar_root(tmp_path_factory, ray_session):
    src = tmp_path_factory.mktemp("tar_src")
    (src / "shard-0.tar").write_bytes(tar_bytes(TAR_MEMBERS))
    (src / "loose.jpg").write_bytes(jpeg_bytes(17))
    root = tmp_path_factory.mktemp("tar_root") / "ds"
    ingest_cli(src, root)
    return src, root


def test_one_unsafe_member_costs_only_itself(tar_root):
    src, root = tar_root
    got = samples(root)
    assert set(got) == {"shard-0.tar#a", "shard-0.tar#b", "shard-0.tar#c", "loose.jpg"}
    assert got["shard-0.tar#a"]["caption"] == "a cat on a chair" and got["shard-0.tar#b"]["caption"] == "a dog"
    assert got["shard-0.tar#c"]["member"] == "c.JPG"
    by_member = {e.get("member"): e for e in scan_errors(root)}
    for member, what in (("../evil.jpg", "'..' path"), ("/tmp/prism4m-absolute.jpg", "absolute"),
                         ("sym.jpg", "link"), ("hard.jpg", "link")):
        line = by_member[member]
        assert line["reason"] == "unsafe", line
        assert "shard-0.tar" in line["message"] and repr(member) in line["message"] and what in line["message"]
    assert by_member["pipe.jpg"]["reason"] == "unsupported"
    assert not Path("/tmp/prism4m-absolute.jpg").exists() and not (src.parent / "evil.jpg").exists()


def test_repeated_member_name_is_recorded_and_the_first_kept(tar_root):
    _, root = tar_root
    dup = [e for e in scan_errors(root) if e["reason"] == "duplicate_member"]
    assert len(dup) == 1 and dup[0]["member"] == "b.jpg"
    assert "shard-0.tar" in dup[0]["message"] and "'b.jpg'" in dup[0]["message"] and "first is kept" in dup[0]["message"]
    assert samples(root)["shard-0.tar#b"]["sha256"] == hashlib.sha256(GOOD_B).hexdigest()


def test_member_without_an_image_extension_gets_the_right_reason(tar_root):
    _, root = tar_root
    weird = [e for e in scan_errors(root) if e.get("member") == "weird..name.jpg"]
    assert len(weird) == 1, scan_errors(root)
    assert weird[0]["reason"] == "unsupported"
    assert "'.name.jpg'" in weird[0]["message"] and "first dot" in weird[0]["message"]
    assert "empty" not in weird[0]["message"]
    assert not any("weird" in e.get("source", "") for e in decode_errors(root))


def test_oversized_tar_member_is_refused_alone(tmp_path, monkeypatch):
    from prism4m.pipeline import sources

    monkeypatch.setattr(sources, "MAX_TAR_MEMBER_BYTES", 50_000)  # a member is read whole: bounded
    big, small = jpeg_bytes(20, (800, 600)), jpeg_bytes(21)
    assert len(big) > 50_000 > len(small)
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes([("big.jpg", big), ("small.jpg", small)]))
    items = list(sources.iter_items(sources.SourceFile(str(path), "s.tar", "tar")))
    assert [(i.member, i.reason) for i in items] == [("big.jpg", "too_large"), ("small.jpg", None)]
    assert "'big.jpg'" in items[0].message and "50,000" in items[0].message and items[1].data == small


def test_every_tar_member_is_a_sample_or_an_error_line(tar_root):
    _, root = tar_root
    accounted = {m["member"] for m in samples(root).values() if m["member"]}
    accounted |= {e["member"] for e in scan_errors(root)}
    captions = {"a.txt", "b.txt"}  # read with their images
    assert accounted | captions == {m[0] for m in TAR_MEMBERS}
    status = json.loads(runner.invoke(app, ["status", str(root), "--json"]).output)
    assert status["source_errors"] == {"unsafe": 4, "unsupported": 2, "duplicate_member": 1}


# ---------------------------------------------------------------------- img2dataset output
def test_img2dataset_metadata_is_not_reported_as_bad_input(tmp_path, ray_session):
    src = tmp_path / "i2d"
    captions = write_img2dataset_output(src)
    root = tmp_path / "ds"
    result = ingest_cli(src, root)
    assert sorted(s["caption"] for s in samples(root).values()) == sorted(captions)
    assert scan_errors(root) == [] and decode_errors(root) == []
    assert "refused" not in result.output or "0 refused while listing/scanning" in result.output
    status = runner.invoke(app, ["status", str(root)])
    assert "input files not ingested" not in status.output


# ---------------------------------------------------------------------- --max-pixels
def test_configured_max_pixels_above_pillows_own_limit_is_the_one_in_force(tmp_path, ray_session):
    from PIL import Image

    width, height = 20000, 9000  # 180 MP: over twice Pillow's default limit, which refuses it on open
    assert width * height > 2 * Image.MAX_IMAGE_PIXELS
    src = tmp_path / "scans"
    src.mkdir()
    (src / "panorama.jpg").write_bytes(big_jpeg(width, height))
    (src / "bomb.png").write_bytes(png_bomb(20000, 20000))  # 400 MP: over the configured limit too
    root = tmp_path / "ds"
    ingest_cli(src, root, "--max-pixels", "200000000")
    got = samples(root)
    assert set(got) == {"panorama.jpg"}
    assert (got["panorama.jpg"]["original_width"], got["panorama.jpg"]["original_height"]) == (width, height)
    (bomb,) = decode_errors(root)
    assert bomb["reason"] == "too_large" and "bomb.png" in bomb["message"]
    assert "max_pixels=200,000,000" in bomb["message"]  # refused by our header check, not by Pillow


def test_a_sample_with_two_images_keeps_the_first_and_says_so(tmp_path):
    """WebDataset has one image per sample: `x.jpg` + `x.png` ingests the first in the tar and
    records the other, named, instead of dropping it silently."""
    from prism4m.pipeline import sources

    first, second = jpeg_bytes(30), jpeg_bytes(31)
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes([("x.jpg", first), ("x.png", second), ("x.txt", b"a caption"), ("y.jpg", first)]))
    items = list(sources.iter_items(sources.SourceFile(str(path), "s.tar", "tar")))
    got = {(i.member, i.reason) for i in items}
    assert got == {("x.png", "duplicate_member"), ("x.jpg", None), ("y.jpg", None)}, got
    note = next(i for i in items if i.reason)
    assert "'x.jpg'" in note.message and "'x.png'" in note.message and "kept" in note.message
    kept = next(i for i in items if i.member == "x.jpg")
    assert kept.data == first and kept.caption == "a caption"
