"""The command line as users type it: help, status, clear errors and exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prism4m.cli import app

runner = CliRunner()
COMMANDS = [["ingest"], ["label"], ["status"], ["run"], ["report"], ["estimate"], ["tokenize"], ["export"],
            ["train"], ["labelers"], ["tokenizer", "train"], ["tokens", "versions"], ["tokens", "select"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_status_reads_a_root(photo_root):
    result = runner.invoke(app, ["status", photo_root])
    assert result.exit_code == 0
    assert "rgb" in result.output and "canny_edge" in result.output
    as_json = json.loads(runner.invoke(app, ["status", photo_root, "--json"]).output)
    rgb = next(f for f in as_json["folders"] if f["folder"] == "rgb")
    assert rgb["committed"] == as_json["rgb_shards"] == 2 and rgb["samples"] == 8


def test_label_rerun_reports_nothing_to_do(photo_root):
    result = runner.invoke(app, ["label", photo_root, "-m", "canny_edge", "-q"])
    assert result.exit_code == 0 and "nothing to do" in result.output


def test_bad_input_gets_a_clear_message_and_exit_code(photo_root, tmp_path):
    bad_cfg = runner.invoke(app, ["label", photo_root, "-m", "canny_edge", "-c", "canny_edge"])
    assert bad_cfg.exit_code == 2 and "LABELER.KEY=VALUE" in bad_cfg.output
    unknown = runner.invoke(app, ["label", photo_root, "-m", "no_such_labeler"])
    assert unknown.exit_code == 2 and "unknown labeler 'no_such_labeler'" in unknown.output
    bad_value = runner.invoke(app, ["label", photo_root, "-m", "canny_edge", "-c", "canny_edge.low=-5"])
    assert bad_value.exit_code == 2 and "low" in bad_value.output
    empty = runner.invoke(app, ["label", str(tmp_path / "nothing"), "-m", "canny_edge"])
    assert empty.exit_code == 2 and "run `prism4m ingest` first" in empty.output
    so = runner.invoke(app, ["status", photo_root, "--storage-options", "{not json"])
    assert so.exit_code == 2 and "--storage-options" in so.output


def test_tokenize_refuses_an_unknown_compression_before_starting(photo_root, tmp_path):
    result = runner.invoke(app, ["tokenize", photo_root, "-t", str(tmp_path / "tok"), "--compression", "zstd"])
    assert result.exit_code == 2 and "--compression" in result.output and "gzip or none" in result.output
