"""The errors a user can cause, and how they read.

`UserError` is the one type for "the request is wrong" (a bad setting, a missing path, a
cluster that cannot run the job): the CLI prints its message as one line `error: …` and
exits 2, with no traceback. Messages name the file, key or setting and what was wrong.
`user_error_message` is the single list of what counts as a user error; everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys


class UserError(ValueError):
    """A mistake in what the user asked for; the message is the whole explanation."""


def describe_validation_error(exc: Exception, where: str) -> str:
    """A pydantic ValidationError as one line in prism4m's voice: `where.key: what was wrong`."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"{where}: {exc}"
    parts = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        key = f"{where}.{loc}" if where and loc else (loc or where or "value")
        if err.get("type") == "extra_forbidden":
            parts.append(f"{key}: unknown setting")
        else:
            given = err.get("input")
            shown = f" (given {given!r})" if given is not None and not isinstance(given, dict) else ""
            msg = err.get("msg", "invalid").rstrip(".")
            # pydantic says "Input should be …" and "Value error, <a validator's message>".
            msg = msg.removeprefix("Value error, ").removeprefix("Input ")
            msg = msg[:1].lower() + msg[1:] if msg[1:2].islower() else msg  # "Field required"
            parts.append(f"{key}: {msg}{shown}")
    return one_line("; ".join(parts) or f"{where}: invalid")


def describe_yaml_error(exc: Exception, where: str) -> str:
    """A YAML parse error as one line: `where: not valid YAML: problem (line L, column C)`."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return one_line(f"{where}: not valid YAML: {problem}{at}")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# Errors of other layers that are the user's to fix; named by module so that checking them
# imports nothing (an exception of a module never imported cannot have been raised).
_USER_ERROR_TYPES = (
    ("prism4m.pipeline.label", "PlanError"),             # unknown folder, missing input folder…
    ("prism4m.pipeline.execute", "WorkerStartupError"),  # a labeler could not start (weights…)
    ("prism4m.labelers.base", "MissingWeightsError"),
)


def _is_instance(exc: BaseException, module: str, name: str) -> bool:
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def user_error_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug (which should
    keep its traceback)."""
    if isinstance(exc, UserError) or any(_is_instance(exc, m, n) for m, n in _USER_ERROR_TYPES):
        return one_line(str(exc))
    if _is_instance(exc, "pydantic", "ValidationError"):
        return describe_validation_error(exc, getattr(exc, "title", ""))
    if _is_instance(exc, "yaml", "YAMLError"):
        mark = getattr(exc, "problem_mark", None)
        return describe_yaml_error(exc, getattr(mark, "name", None) or "YAML")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        if exc.filename:
            return one_line(f"{exc.filename}: {(exc.strerror or type(exc).__name__).lower()}")
        return one_line(str(exc))
    return None


def refuse_file_root(root: str) -> str:
    """A dataset root must be a folder (or not exist yet): refuse a local regular file before
    any work starts, naming it. Remote roots are not checked here."""
    path = root.removeprefix("file://")
    if "://" not in path and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{root}: is a file, not a dataset root folder")
    return root
