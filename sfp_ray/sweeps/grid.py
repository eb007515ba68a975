"""The grid of a sweep: ``--grid`` parsing, the cells and their validated configurations, the runs cells share.

A grid maps dotted configuration keys to lists of values; its cells are their cartesian
product, in the grid's key order (the last key varies fastest). A cell is named by its swept
values (:func:`cell_id`), the name of its run folder ``OUT/cells/<cell-id>/``.

Before anything runs, the configuration of every cell is built and validated
(:func:`build_cells`, :func:`check_cells`: a bad key or value fails with one line naming it),
and every method is checked against every cell on the ``meta`` device (:func:`method_error`:
invalid pairs are skipped and reported, not run). A method runs once per distinct effective
configuration: cells that differ only in keys it ignores share that run (:func:`share_runs`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from sfp_ray.config import Config, set_value, split_assignment
from sfp_ray.errors import ConfigError, SfpRayError, first_line

#: Configuration keys a grid may not sweep, and what to use instead.
RESERVED = {"seed": "use seeds (--seeds) to repeat runs", "method": "use methods (--methods)"}


def split_values(text: str) -> list[str]:
    """Split ``"0,1,[2,3]"`` at the commas outside brackets and braces.

    Example:
        >>> split_values("0, 0.5,1.0"), split_values("[0,1],[2,3]")
        (['0', '0.5', '1.0'], ['[0,1]', '[2,3]'])
    """
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return raw


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` arguments (``KEY=V1,V2,...``) -> ``{key: [values]}`` (values read as YAML).

    Example:
        >>> parse_grid(["split.head_blocks=0,1,2", "pruning.keep_ratio=0.25,1.0"])
        {'split.head_blocks': [0, 1, 2], 'pruning.keep_ratio': [0.25, 1.0]}
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, raw = split_assignment(item, "--grid", "KEY=V1,V2,..., e.g. split.head_blocks=0,1,2")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values once, e.g. {key}=V1,V2")
        values = split_values(raw.strip())
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {key}: empty value in {raw.strip()!r}; expected V1,V2,...")
        grid[key] = [_parse_value(v) for v in values]
    return grid


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its id (a folder name), the swept values and the configuration."""

    id: str
    values: dict[str, Any]
    cfg: Config


def get_dotted(cfg: Any, key: str) -> Any:
    """The value of a dotted key in a configuration.

    Example:
        >>> get_dotted(Config(), "split.head_blocks")
        1
    """
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _column(value: Any) -> Any:
    """A swept value as a table cell: scalars as they are, lists and mappings as text."""
    return _show(value) if isinstance(value, (tuple, list, Mapping)) else value


def cell_id(values: Mapping[str, Any]) -> str:
    """A readable, stable folder name for a cell; a hash is appended when characters had to be replaced.

    Example:
        >>> cell_id({"split.head_blocks": 0, "pruning.keep_ratio": 0.25})
        'split.head_blocks=0__pruning.keep_ratio=0.25'
    """
    text = "__".join(f"{k}={_show(v)}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._=,+\[\]{}-]", "-", text)
    if safe != text or len(safe) > 150:
        import hashlib

        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:150]}-{digest}"
    return safe


def _strip_key(key: str, msg: str) -> str:
    return msg[len(key) + 1:].strip() if msg.startswith(f"{key}:") else msg


def build_cells(grid: Mapping[str, Sequence[Any]], base: Config) -> list[Cell]:
    """The validated configuration of every cell of ``grid`` on top of ``base`` (nothing runs).

    Every key and value is checked first (known key, value of the key's type), then every
    cell's combination of values (ranges, cross-field constraints).

    Raises:
        ConfigError: one line naming the grid key (and value) that is unknown or invalid, or
            the cell whose combination of values is invalid.
    """
    if not grid:
        raise ConfigError("--grid: give at least one KEY=V1,V2,... to sweep, e.g. split.head_blocks=0,1,2")
    values: dict[str, list[Any]] = {}
    for key, vals in grid.items():
        key = str(key).strip()
        if key in RESERVED:
            raise ConfigError(f"--grid {key}: cannot be swept; {RESERVED[key]}")
        if isinstance(vals, str):
            vals = [_parse_value(v) for v in split_values(vals)]
        vals = list(vals)
        if not vals:
            raise ConfigError(f"--grid {key}: give at least one value")
        coerced: list[Any] = []
        for v in vals:
            try:
                c = get_dotted(set_value(base, key, v), key)
            except ConfigError as e:
                what = key if "unknown configuration key" in str(e) or "section" in str(e) else f"{key}={_show(v)}"
                raise ConfigError(f"--grid {what}: {_strip_key(key, str(e))}") from None
            if c in coerced:
                raise ConfigError(f"--grid {key}: value {_show(c)} is given twice")
            coerced.append(c)
        values[key] = coerced
    cells = []
    for combo in itertools.product(*values.values()):
        point = dict(zip(values, combo))
        try:
            cfg = base.replace(**point)
        except ConfigError as e:
            for k, v in point.items():  # a value that is invalid on its own is named alone
                if str(e).startswith(f"{k}:"):
                    try:
                        base.replace(**{k: v})
                    except ConfigError as alone:
                        if str(alone) == str(e):
                            raise ConfigError(f"--grid {k}={_show(v)}: {_strip_key(k, str(e))}") from None
            where = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
            raise ConfigError(f"--grid cell {where}: {e}") from None
        cells.append(Cell(cell_id(point), point, cfg))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("--grid: two cells have the same name; use distinct values")
    return cells


def check_datasets(cells: Sequence[Cell]) -> None:
    """Every cell's ``data.name`` is a registered dataset (a one-line ConfigError otherwise)."""
    from sfp_ray.data import list_datasets

    known = set(list_datasets())
    for cell in cells:
        name = cell.cfg.data.name
        if name.strip().lower().replace("_", "-") not in known:
            where = f"--grid data.name={name}" if "data.name" in cell.values else "data.name"
            raise ConfigError(f"{where}: unknown dataset {name!r}; registered datasets: {', '.join(sorted(known))}")


def method_error(cfg: Config, method: str) -> str | None:
    """Why ``method`` cannot run on ``cfg`` (its settings, the model, the cut), or None when it can.

    Checked on the ``meta`` device, without data or weights, like the checks before a run
    (:func:`~sfp_ray.preflight.check_on_meta`).
    """
    from sfp_ray.methods.catalog import method_info, resolve
    from sfp_ray.preflight import check_cut, check_on_meta

    try:
        rcfg = resolve(method_info(method), cfg)
        check_cut(rcfg)
        check_on_meta([(method, rcfg)])
    except SfpRayError as e:
        return first_line(e)
    return None


def check_cells(cells: Sequence[Cell], methods: Sequence[str]) -> None:
    """What every cell's configuration can be checked for without torch: the dataset and its classes, the
    device mix, catalogue and server, a checkpoint file (:func:`~sfp_ray.preflight.check_config`; the cut is
    checked per method, :func:`method_error`). One line naming the swept value when one is the cause.
    """
    from sfp_ray.methods.catalog import method_info, resolve
    from sfp_ray.preflight import check_config

    check_datasets(cells)
    for cell in cells:
        for m in methods:
            try:
                check_config(resolve(method_info(m), cell.cfg), cut=False)
            except ConfigError as e:
                key = next((k for k in cell.values if str(e).startswith(f"{k}:") or str(e).startswith(f"{k}.")),
                           None)
                if key is None:
                    raise
                raise ConfigError(f"--grid {key}={_show(cell.values[key])}: {_strip_key(key, str(e))}") from None


def share_runs(cells: Sequence[Cell], methods: Sequence[str],
               invalid: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """``(cell, method) -> cell`` whose run it shares: the first cell with the same effective configuration.

    A method's effective configuration (:meth:`~sfp_ray.methods.base.Method.effective_config`) holds
    only the keys it reads, so a swept key it ignores (``fl_full`` and ``split.*``) gives it the
    same run in several cells; that run is trained once, in the first of them, and its rows are
    shared by the others. Invalid pairs share nothing.
    """
    from sfp_ray.methods import get_method

    first: dict[tuple[str, str], str] = {}
    shared: dict[tuple[str, str], str] = {}
    for cell in cells:
        for m in methods:
            if (cell.id, m) in invalid:
                continue
            key = (m, json.dumps(get_method(m).effective_config(cell.cfg), sort_keys=True, default=str))
            owner = first.setdefault(key, cell.id)
            if owner != cell.id:
                shared[(cell.id, m)] = owner
    return shared


def _sharing_note(cells: Sequence[Cell], methods: Sequence[str], seeds: Sequence[int],
                  invalid: Mapping[tuple[str, str], str], shared: Mapping[tuple[str, str], str]) -> str:
    """One line: runs in the grid, runs to train, runs saved by sharing, and why."""
    from sfp_ray.methods import get_method

    total = len(cells) * len(methods) * len(seeds)
    valid = total - len(invalid) * len(seeds)
    saved = len(shared) * len(seeds)
    line = (f"{total} runs in the grid ({len(cells)} cells x {len(methods)} methods x {len(seeds)} seeds"
            + (f", {len(invalid) * len(seeds)} invalid" if invalid else "") + f"), {valid - saved} distinct to train")
    if not saved:
        return line + ": no run saved (every method reads every swept key)"
    keys = list(cells[0].values)
    why = []
    for m in dict.fromkeys(mm for (_, mm) in shared):
        method = get_method(m)
        unread = [k for k in keys if k not in method.reads(cells[0].cfg)]
        forced = [k for k in keys if k in method.overrides]
        why.append(f"{m} does not read {', '.join(unread)}" if unread else
                   f"{m} forces {', '.join(forced)}" if forced else f"{m} runs the same in several cells")
    return f"{line}: {saved} runs saved by sharing ({'; '.join(why)})"

