"""The configuration reference ``docs/configuration.md``, generated from the typed configuration.

Every key of :class:`~sfp_ray.config.Config` is listed with its type (from the field's
annotation), its default (from the dataclass) and its meaning: the attribute docstring
written under the field in ``sfp_ray/config/schema.py``, read from the source with :mod:`ast`.
A section's introduction is its class docstring. The page is never edited by hand:

    python -m sfp_ray.docgen            # rewrite docs/configuration.md (also: make docs)
    python -m sfp_ray.docgen --check    # exit 1 when the committed page is out of date

``tests/test_docs.py`` fails when a key has no meaning or the committed page differs from
:func:`config_reference_markdown`. This module imports nothing of sfp-ray but the
configuration.

Example:
    >>> keys = {k.key: k for k in config_keys()}
    >>> keys["federation.num_clients"].type, keys["federation.num_clients"].default
    ('int', '10')
    >>> keys["data.classes"].type, keys["data.classes"].default
    ('list of int or null', '[5, 6, 7, 8, 9]')
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from sfp_ray.config import Config

#: Where the page lives in a source checkout.
DEFAULT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: The command that rewrites the page (named in the page and in test failures).
REGENERATE = "python -m sfp_ray.docgen"

_INTRO = """\
Every key of the experiment configuration, its type, its default and what it means.
The configuration is typed and frozen (`sfp_ray/config/schema.py`); an unknown key or a bad value
is rejected with one line naming the dotted key and what is allowed.

Keys are set in a YAML file, on the command line or in Python:

- a YAML file (`--config FILE`), whose top-level mappings are the sections below:

  ```yaml
  federation:
    rounds: 20
  pruning:
    keep_ratio: 0.3
  ```

- dotted overrides applied on top of the file, `--set KEY=VALUE` (repeatable), e.g.
  `--set federation.rounds=20 --set data.classes=[0,1,2] --set model.checkpoint=none`;
  a value is read as YAML (`null`, `true`, numbers, `[a, b]`, `{a: 1}`);
- in Python, `sfp_ray.run(overrides=["federation.rounds=20"])`,
  `sfp_ray.load_config("exp.yaml", overrides=[...])` or
  `Config().replace(**{"federation.rounds": 20})`.

Types: `X or null` accepts `null` (also `none`), meaning the described fallback; a list
of int accepts `[5, 6]` or `5,6`; a mapping given replaces the default mapping as a whole. A method
may force some keys when it runs (e.g. `sfprompt_no_prune` sets `pruning.keep_ratio=1.0`;
see [methods.md](methods.md)); the resolved configuration of every run is written to its
run folder's `config.yaml` (see [reports.md](reports.md)).
"""


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One configuration key: dotted name, type, default and meaning, as shown on the page."""

    key: str
    section: str
    type: str
    default: str
    meaning: str


# --------------------------------------------------------------------------- reading the source


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: the string literal written under each field.

    Example:
        >>> from sfp_ray.config import FederationConfig
        >>> field_docs(FederationConfig)["rounds"]
        'Federated rounds of a run.'
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return out


def rst_to_markdown(text: str) -> str:
    """Inline reStructuredText of the docstrings as Markdown: ``x`` and :role:`~a.b` become `x` and `a.b`.

    Example:
        >>> rst_to_markdown("see :mod:`sfp_ray.pruning` and ``keep_ratio``")
        'see `sfp_ray.pruning` and `keep_ratio`'
    """
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"``\1``", text)
    return text.replace("``", "`")


def type_name(tp: Any) -> str:
    """A field's annotation in words.

    Example:
        >>> type_name(int | None), type_name(typing.Mapping[str, float])
        ('int or null', 'mapping of str to float')
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is not None and getattr(origin, "__name__", "") == "Mapping":
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def default_text(value: Any) -> str:
    """A default as it would be written in YAML.

    Example:
        >>> default_text(None), default_text(False), default_text((0, 1)), default_text({"rpi4": 0.5})
        ('null', 'false', '[0, 1]', '{rpi4: 0.5}')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {default_text(v)}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------- the keys


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _walk(cls: type, prefix: str, section: str) -> Iterator[KeyDoc]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, f"{prefix}{f.name}.", f.name)
            continue
        yield KeyDoc(prefix + f.name, section, type_name(tp), default_text(_default(f)),
                     rst_to_markdown(docs.get(f.name, "")))


def config_keys() -> list[KeyDoc]:
    """Every leaf key of :class:`~sfp_ray.config.Config`, in declaration order (top-level keys first)."""
    keys = list(_walk(Config, "", ""))
    return [k for k in keys if not k.section] + [k for k in keys if k.section]


def undocumented() -> list[str]:
    """Dotted keys without a meaning (no attribute docstring under the field)."""
    return [k.key for k in config_keys() if not k.meaning]


def sections() -> list[tuple[str, type]]:
    """``(name, dataclass)`` of every section of :class:`~sfp_ray.config.Config`, in declaration order."""
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]


# --------------------------------------------------------------------------- the page


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(keys: Sequence[KeyDoc]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys:
        lines.append(f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.meaning)} |")
    return lines


def config_reference_markdown() -> str:
    """The text of ``docs/configuration.md``."""
    keys = config_keys()
    secs = sections()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from sfp_ray/config/schema.py by `{REGENERATE}` (or `make docs`); do not edit by hand. -->",
        "",
        _INTRO.rstrip(),
        "",
        "Sections: " + ", ".join(f"[`{name}`](#{name})" for name, _ in secs) + ".",
        "",
        "## Top level",
        "",
        rst_to_markdown(" ".join(inspect.getdoc(Config).split("\n\n")[0].split())),
        "",
        *_table([k for k in keys if not k.section]),
    ]
    for name, cls in secs:
        intro = [" ".join(p.split()) for p in inspect.getdoc(cls).split("\n\n")]
        lines += ["", f"## {name}", ""]
        for p in intro:
            lines += [rst_to_markdown(p), ""]
        lines += _table([k for k in keys if k.section == name])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page (default ``docs/configuration.md``), or with ``--check`` compare it; 1 when stale."""
    parser = argparse.ArgumentParser(prog="python -m sfp_ray.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PAGE, help="the page to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"undocumented configuration keys (add a docstring under the field in sfp_ray/config/schema.py): "
              f"{', '.join(missing)}", file=sys.stderr)
        return 1
    text = config_reference_markdown()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else None
        if current != text:
            print(f"{args.out} is out of date; regenerate it with `{REGENERATE}` (or `make docs`)", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(config_keys())} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
