"""Exceptions raised by sfp-ray library code, and the one-line forms of errors (first lines, YAML problems, YAML files).

Library code raises; only the CLI turns an error into an exit code and a one-line message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class SfpRayError(Exception):
    """Base class of every error sfp-ray raises on purpose."""


class ConfigError(SfpRayError, ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""


class DataError(SfpRayError):
    """A dataset cannot be found or read. The message says where it looked and what to do."""


class ModelError(SfpRayError):
    """A model or checkpoint cannot be created or loaded."""


class ClusterError(SfpRayError):
    """The Ray cluster cannot host the requested actors, or cannot be reached."""


class RoundLost(SfpRayError):
    """Work of a round was lost (its server, or client results held on a node that left); it must start over."""


class ServerLost(RoundLost):
    """The server died during a round; the executor restarted it and the round must start over."""


class RoundFailed(SfpRayError):
    """Too few clients of a round succeeded (``federation.min_success_fraction``), even after a retry."""


def first_line(e: BaseException, *, typed: bool = False, limit: int | None = None) -> str:
    r"""The first non-blank line of an error's message, for one-line reports.

    ``typed`` puts the exception's type in front (``Type: message``); an error without a message
    gives its type's name; ``limit`` cuts the text to that many characters (ending in ``...``).

    Example:
        >>> first_line(ValueError("\n  bad value\nmore")), first_line(KeyError(), typed=True)
        ('bad value', 'KeyError')
        >>> first_line(RuntimeError("x" * 20), typed=True, limit=16)
        'RuntimeError:...'
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    name = type(e).__name__
    text = (f"{name}: {lines[0]}" if typed else lines[0]) if lines else name
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def yaml_problem(exc: Exception) -> str:
    r"""One line for a YAML parse error: line and column, what went wrong, and a tab named as such.

    PyYAML's own message spreads over several lines and starts with its parser state
    ("while scanning for the next token"); this keeps the position (1-based) and the
    problem. Works on any exception; without a position it is the first line of the message.

    Example:
        >>> import yaml
        >>> try:
        ...     yaml.safe_load("federation:\n\trounds: 3\n")
        ... except yaml.YAMLError as e:
        ...     print(yaml_problem(e))
        line 2, column 1: a tab character; YAML indents with spaces, never tabs
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = str(getattr(exc, "problem", None) or getattr(exc, "context", None) or "").strip()
    if not problem:
        problem = first_line(exc)
    line_text = ""
    if mark is not None and getattr(mark, "buffer", None) is not None:
        start = mark.buffer.rfind("\n", 0, mark.pointer) + 1
        end = mark.buffer.find("\n", mark.pointer)
        line_text = mark.buffer[start:end if end >= 0 else len(mark.buffer)]
    if "\\t" in problem or "\t" in problem:
        problem = "a tab character; YAML indents with spaces, never tabs"
    elif "\t" in line_text[: len(line_text) - len(line_text.lstrip())]:
        problem += " (the line is indented with a tab; YAML indents with spaces, never tabs)"
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_yaml_file(path: str | os.PathLike, key: str) -> Any:
    """The YAML document of the file ``path`` (None for an empty one); every problem is a one-line ConfigError.

    ``key`` is the setting or flag that named the file (``--config``, ``devices.catalog``);
    each message starts with it.
    """
    import yaml

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}: {p} is a folder, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"{key}: file not found: {p}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: {p} is not valid YAML: {yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {p} ({e.strerror or e})") from None
