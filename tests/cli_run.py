"""Running `prism4m` in-process the way the journey tests do: a crash is re-raised with its
traceback, an exit is an exit code."""

from __future__ import annotations

from typer.testing import CliRunner

from prism4m.cli import app

runner = CliRunner()


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug, not an exit: show its traceback
    return result.exit_code, result.output


def ok(*args) -> str:
    """The command's output; it must exit 0."""
    code, out = cli(*args)
    assert code == 0, out
    return out
