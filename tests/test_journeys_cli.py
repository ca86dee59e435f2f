"""User journeys through the command line: every command's output can be scripted and monitored.

- `prism4m status --json` is valid JSON of one documented shape, also on a root that has
  errors of every kind (refused files, duplicates, a labeler that raised on a sample);
- a mistake the user can fix prints one line `error: …` on stderr naming the setting, path or
  file, and exits 2, on every command, without a traceback;
- `--version` and `labelers --config NAME` answer what a user asks before a run;
- ingest, label and run print the same shape of summary line, never a Python dict repr.

Commands run in-process (typer's CliRunner, the session's Ray) except where a labeler must be
found by Ray workers through an entry point: that one runs `prism4m` in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import prism4m
from hostile import write_hostile_corpus
from prism4m.cli import app
from prism4m.labelers.testing import write_entry_point_plugin
from prism4m.contract.store import DatasetStore

pytestmark = pytest.mark.timeout(300)

runner = CliRunner()
PRISM4M = str(Path(sys.executable).with_name("prism4m"))
INGEST = ["--shard-size", "4", "--short-side", "64", "--n-crops", "2"]
# "<stage>: ran …; up to date: …; N samples[; N failed]; Ts", the first line of every stage.
STAGE_LINE = re.compile(r"^(ingest|label|tokenize): ran (.+?); up to date: (.+?); (\d+) samples(; \d+ failed)?; "
                        r"\d+\.\ds$")


def _stage_line(output: str, stage: str) -> re.Match:
    lines = [ln for ln in output.splitlines() if ln.startswith(f"{stage}: ")]
    assert len(lines) == 1, output
    m = STAGE_LINE.match(lines[0])
    assert m, lines[0]
    return m


def _no_dict_reprs(output: str) -> None:
    assert not re.search(r"\{'|\{\}|Counter\(", output), output


@pytest.fixture(scope="module")
def errorful_root(tmp_path_factory, ray_session):
    """A root built by the commands, with every kind of error a real corpus has: files refused
    while decoding (empty, truncated, …), refused while listing (duplicate, unsupported), and
    one sample a labeler raised on (an invalid record)."""
    tmp = tmp_path_factory.mktemp("journeys")
    src = tmp / "src"
    expected = write_hostile_corpus(src)
    root = str(tmp / "ds")
    ingested = runner.invoke(app, ["ingest", str(src), root, *INGEST, "-q"])
    assert ingested.exit_code == 0, ingested.output
    victim = [m.key for m in DatasetStore(root).iter_shard("rgb", 0)][1]
    plugin = write_entry_point_plugin(tmp / "plugin")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin, env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    labelled = subprocess.run([PRISM4M, "label", root, "-m", "fault_injector", "-q", "-w", "1",
                               "-c", "fault_injector.mode=raise", "-c", f"fault_injector.fault_key={victim}"],
                              env=env, capture_output=True, text=True, timeout=240)
    assert labelled.returncode == 0, labelled.stdout + labelled.stderr
    return {"root": root, "src": str(src), "expected": expected, "ingest_out": ingested.stdout,
            "label_out": labelled.stdout}


def test_status_json_parses_on_a_root_with_errors_of_every_kind(errorful_root):
    result = runner.invoke(app, ["status", errorful_root["root"], "--json"])
    assert result.exit_code == 0, result.output
    st = json.loads(result.stdout)
    assert set(st) == {"root", "rgb_shards", "random_weights", "folders", "source_errors", "failures"}
    folders = {f["folder"]: f for f in st["folders"]}
    assert set(folders["rgb"]) == {"folder", "producer", "random_weights", "committed", "stale", "missing",
                                   "failed", "samples", "invalid", "errors"}
    refused_decoding = Counter(r for r in errorful_root["expected"].values()
                               if r not in ("ok", "duplicate", "unsupported"))
    assert len(refused_decoding) >= 3  # empty, truncated, undecodable, …: several reasons
    assert folders["rgb"]["errors"] == dict(refused_decoding)
    assert st["source_errors"] == {"duplicate": 1, "unsupported": 1}
    assert folders["fault_injector"]["errors"] == {"label_exception": 1}
    assert folders["fault_injector"]["invalid"] == 1
    assert folders["fault_injector"]["committed"] == folders["rgb"]["committed"] == st["rgb_shards"] >= 2
    assert st["failures"] == [] and st["random_weights"] is False
    # The table says the same in words a user can grep.
    table = runner.invoke(app, ["status", errorful_root["root"]]).stdout
    assert "label_exception=1" in table and "input files not ingested: duplicate=1, unsupported=1" in table


def test_stages_print_one_shape_of_summary_and_no_dict_reprs(errorful_root, tmp_path):
    root = errorful_root["root"]
    ing = _stage_line(errorful_root["ingest_out"], "ingest")
    n_samples = sum(1 for r in errorful_root["expected"].values() if r == "ok")
    assert ing.group(2) == f"{len(DatasetStore(root).ledger('rgb'))} shards" and int(ing.group(4)) == n_samples
    assert "  listing/scan: duplicate=1, unsupported=1" in errorful_root["ingest_out"]
    lab = _stage_line(errorful_root["label_out"], "label")
    assert lab.group(2).startswith("fault_injector=") and lab.group(3) == "-" and int(lab.group(4)) == n_samples

    first = runner.invoke(app, ["label", root, "-m", "canny_edge", "-q"])
    assert first.exit_code == 0, first.output
    assert _stage_line(first.stdout, "label").group(2).startswith("canny_edge=")
    again = runner.invoke(app, ["label", root, "-m", "canny_edge", "-q"])
    m = _stage_line(again.stdout, "label")
    assert m.group(2) == "0 shards (nothing to do)" and m.group(3).startswith("canny_edge=")

    # `prism4m run` prints the same lines as the commands, then the status table.
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"root": root, "ingest": {"source": errorful_root["src"],
                                                        "config": {"shard_size": 4, "short_side": 64, "n_crops": 2}},
                               "label": {"modalities": ["canny_edge"]}}))
    ran = runner.invoke(app, ["run", str(job), "-q"])
    assert ran.exit_code == 0, ran.output
    assert _stage_line(ran.stdout, "ingest").group(2) == "0 shards (nothing to do)"
    assert _stage_line(ran.stdout, "label").group(2) == "0 shards (nothing to do)"
    assert "label_exception=1" in ran.stdout  # the status table follows
    for out in (errorful_root["ingest_out"], errorful_root["label_out"], first.stdout, again.stdout, ran.stdout):
        _no_dict_reprs(out)


def _one_line_error(result, *fragments: str) -> str:
    """What a user (or a script) sees: exit code 2, one stderr line `error: …`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture
def paths(errorful_root, tmp_path) -> dict[str, str]:
    (tmp_path / "a_file").write_text("not a dataset root\n")
    (tmp_path / "bad.yaml").write_text("canny_edge: {low: [1\n")
    (tmp_path / "typo.yaml").write_text("root: ds\nlable: {modalities: [canny_edge]}\n")
    (tmp_path / "step_typo.yaml").write_text("root: ds\nlabel: {modalities: [canny_edge], wokers: 2}\n")
    return {"ROOT": errorful_root["root"], "SRC": errorful_root["src"], "TMP": str(tmp_path),
            "FILE": str(tmp_path / "a_file")}


USER_ERRORS = {
    # labeler settings, checked before any work, in prism4m's words
    "dinov2 input_size": (["label", "{ROOT}", "-m", "dinov2", "-c", "dinov2.input_size=100"],
                          ["dinov2.input_size", "multiple of", "14", "(given 100)"]),
    "config typo": (["label", "{ROOT}", "-m", "canny_edge", "-c", "canny_edge.lowx=5"],
                    ["canny_edge.lowx: unknown setting"]),
    "config value": (["label", "{ROOT}", "-m", "canny_edge", "-c", "canny_edge.low=abc"],
                     ["canny_edge.low:", "(given 'abc')"]),
    "unknown labeler": (["label", "{ROOT}", "-m", "no_such_labeler"], ["unknown labeler 'no_such_labeler'"]),
    "no labeler": (["label", "{ROOT}", "-m", " , "], ["--modalities ' , ': no labeler named"]),
    "config file YAML": (["label", "{ROOT}", "-m", "canny_edge", "--config-file", "{TMP}/bad.yaml"],
                         ["bad.yaml: not valid YAML", "line 2"]),
    "labelers --config": (["labelers", "--config", "no_such_labeler"], ["unknown labeler 'no_such_labeler'"]),
    # a root that is a regular file, refused before anything is read, on every command
    "status file": (["status", "{FILE}"], ["{FILE}: is a file"]),
    "status --json file": (["status", "{FILE}", "--json"], ["{FILE}: is a file"]),
    "label file": (["label", "{FILE}", "-m", "canny_edge"], ["{FILE}: is a file"]),
    "ingest into file": (["ingest", "{SRC}", "{FILE}"], ["{FILE}: is a file"]),
    "tokenize file": (["tokenize", "{FILE}", "-t", "{TMP}/tok"], ["{FILE}: is a file"]),
    "export file": (["export", "{FILE}"], ["{FILE}: is a file"]),
    # a root that is none (a typo, or the corpus folder) is said so, not shown as "0 rgb shards"
    "status no root": (["status", "{TMP}/no_such_root"], ["{TMP}/no_such_root: not a prism4m dataset root",
                                                          "no such directory"]),
    "status --json not a root": (["status", "{SRC}", "--json"], ["{SRC}: not a prism4m dataset root", "prism4m ingest"]),
    "report no root": (["report", "{TMP}/no_such_root", "-o", "{TMP}/report"], ["not a prism4m dataset root"]),
    # numbers out of their range
    "workers 0": (["label", "{ROOT}", "-m", "canny_edge", "-w", "0"], ["--workers", "greater than or equal to 1"]),
    "tokenize batch 0": (["tokenize", "{ROOT}", "-t", "{TMP}/tok", "--batch-size", "0"], ["--batch-size"]),
    "estimate speedup 0": (["estimate", "--images", "10", "--gpus", "1", "--root", "{ROOT}", "--speedup", "0"],
                           ["--speedup must be above 0 (given 0)"]),
    # paths and job files
    "missing source": (["ingest", "{TMP}/no_such_source", "{TMP}/ds"], ["{TMP}/no_such_source"]),
    "missing job": (["run", "{TMP}/no_such_job.yaml"], ["{TMP}/no_such_job.yaml", "no such file"]),
    "job YAML": (["run", "{TMP}/bad.yaml"], ["bad.yaml: not valid YAML"]),
    "job key typo": (["run", "{TMP}/typo.yaml"], ["typo.yaml: lable: unknown setting"]),
    "job step typo": (["run", "{TMP}/step_typo.yaml"], ["step_typo.yaml: label.wokers: unknown setting"]),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_a_user_mistake_is_one_line_naming_it_and_exit_code_2(case, paths):
    args, fragments = USER_ERRORS[case]
    result = runner.invoke(app, [a.format(**paths) for a in args])
    _one_line_error(result, *(f.format(**paths) for f in fragments))
    if case == "ingest into file":
        assert Path(paths["FILE"]).read_text() == "not a dataset root\n"
    if case == "report no root":
        assert not Path(paths["TMP"], "report").exists()  # nothing written for a root that is none


def test_ray_address_without_a_cluster_is_one_line(errorful_root, monkeypatch):
    """`--ray-address auto` with no cluster running. On a shared machine `auto` would find any
    other Ray instance, so Ray's own answer for "nothing running" is given in-process."""
    import ray

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to "
                              "by setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    result = runner.invoke(app, ["label", errorful_root["root"], "-m", "color_palette", "--ray-address", "auto"])
    _one_line_error(result, "--ray-address auto")  # ray_env words the rest


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"prism4m {prism4m.__version__}"


def test_labelers_config_shows_keys_types_defaults_and_descriptions():
    result = runner.invoke(app, ["labelers", "--config", "canny_edge"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "type", "default", "description"]
    rows = {ln.split()[0]: ln for ln in lines[1:] if not ln.startswith("set with")}
    assert re.match(r"low\s+int \| None\s+null\s+fixed low threshold", rows["low"])
    assert re.match(r"blur_sigma\s+float\s+1\.0\s+Gaussian blur", rows["blur_sigma"])
    assert re.match(r"group\s+str\s+default\s+labelers of one group", rows["group"])
    # an aligned table: every description starts in the same column
    col = lines[0].index("description")
    assert all(ln[col - 2:col] == "  " and ln[col] != " " for ln in rows.values())
    # the labeler's own settings come before the ones every labeler has
    keys = list(rows)
    assert keys.index("low") < keys.index("num_cpus")
    assert "prism4m label ROOT -m canny_edge -c canny_edge.KEY=VALUE" in result.stdout
    # the name alone, as users first type it, answers the same
    assert runner.invoke(app, ["labelers", "canny_edge"]).stdout == result.stdout
    both = runner.invoke(app, ["labelers", "canny_edge", "--config", "depth"])
    assert both.exit_code == 2 and "give one" in both.output


@pytest.mark.parametrize("argv, fragments", [
    (["label"], ("prism4m label", "Missing argument", "--help")),
    (["label", "somewhere", "--bogus"], ("No such option: --bogus",)),
    (["nosuch"], ("No such command 'nosuch'",)),
    (["tokenizer", "train", "somewhere"], ("prism4m tokenizer train", "--modality")),
    (["--bogus"], ("prism4m", "No such option: --bogus")),
    (["ingest", "a", "b", "--workers", "x"], ("--workers",)),
])
def test_a_malformed_command_line_is_one_line_too(argv, fragments):
    """The parser's mistakes read like every other mistake: `error: …` on one line, exit 2."""
    _one_line_error(runner.invoke(app, argv, prog_name="prism4m"), *fragments)
