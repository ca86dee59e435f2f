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


def _commands(group, prefix: str = "") -> dict[str, object]:
    """`prism4m` command path → its click command, sub-groups flattened (`tokens select` → tokens_select)."""
    import typer.main

    out = {}
    for name, cmd in typer.main.get_command(group).commands.items() if prefix == "" else group.commands.items():
        path = f"{prefix}{name}".replace("-", "_")
        if hasattr(cmd, "commands"):
            out.update(_commands(cmd, f"{path}_"))
        else:
            out[path] = cmd
    return out


def test_the_api_has_one_function_per_command_with_the_commands_options():
    """prism4m.api is the front door: a function per command, named as the command (sub-commands
    joined by `_`), taking each of its options (names as the command's, a list for a repeatable
    option may be plural; display switches such as --quiet and --json are the CLI's own)."""
    import inspect

    from prism4m import api

    commands = _commands(app)
    assert set(commands) == {"ingest", "label", "status", "report", "estimate", "tokenizer_train", "tokenize",
                             "export", "tokens_versions", "tokens_select", "train", "labelers", "run"}
    cli_only = {"quiet", "as_json", "config_file"}  # display switches; label's config file is read into `config`
    renamed = {("label", "config"): "configs", ("report", "tokenizer"): "tokenizers",
               ("tokenize", "tokenizer"): "tokenizers", ("labelers", "name"): "config"}  # NAME: --config's alias
    for name, cmd in commands.items():
        fn = getattr(api, name)
        assert callable(fn) and name in api.__all__, name
        params = set(inspect.signature(fn).parameters)
        if name == "ingest":  # its settings are keyword overrides of the ingest config's fields
            params |= set(api.IngestConfig.model_fields)
        for p in cmd.params:
            if p.name in cli_only:
                continue
            assert renamed.get((name, p.name), p.name) in params, (name, p.name)


def test_the_cli_imports_only_the_api_below_itself():
    import ast

    import prism4m.cli

    tree = ast.parse(open(prism4m.cli.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    ours = {m for m in imported if m.startswith("prism4m")}
    assert ours <= {"prism4m", "prism4m.errors"}, ours  # `from prism4m import api` / __version__
    from_prism4m = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "prism4m"
                    for a in node.names}
    assert from_prism4m <= {"api", "__version__"}, from_prism4m
