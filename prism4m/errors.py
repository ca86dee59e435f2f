"""The errors a user can cause, and how they read.

`UserError` is the one type for "the request is wrong" (a bad setting, a missing path, a
cluster that cannot run the job): the CLI prints its message as one line `error: …` and
exits 2, with no traceback. Messages name the file, key or setting and what was wrong.
"""

from __future__ import annotations


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
        key = f"{where}.{loc}" if loc else where
        if err.get("type") == "extra_forbidden":
            parts.append(f"{key}: unknown setting")
        else:
            given = err.get("input")
            shown = f" (given {given!r})" if given is not None and not isinstance(given, dict) else ""
            parts.append(f"{key}: {err.get('msg', 'invalid').rstrip('.')}{shown}")
    return "; ".join(parts) or f"{where}: invalid"
