"""The pages in docs/: complete, current, and in agreement with what the code writes.

* ``docs/configuration.md`` is generated (:mod:`sfp_ray.docgen`): every key must have a
  meaning and the committed page must equal the generated one;
* ``docs/reports.md`` documents every file of a run folder and every column: a tiny run
  (and a tiny Ray run, and a projection) must write exactly the documented columns;
* ``docs/methods.md`` and ``docs/architecture.md`` name every method, pruning policy and
  module;
* every ``docs/*.md`` path the code or the README mentions, and every link between the
  pages, exists.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import typing
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny

import sfp_ray
from sfp_ray.config import Config, load_config
from sfp_ray.docgen import REGENERATE, config_keys, config_reference_markdown, main, undocumented

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = ("architecture.md", "methods.md", "configuration.md", "reports.md", "heterogeneity.md", "clock.md")

#: A run of a few seconds (as in tests/test_api.py).
TINY = tiny("federation.rounds=2")


def _read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- configuration.md


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a config dataclass, found independently of the generator."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_configuration_key_has_a_meaning():
    assert sorted(k.key for k in config_keys()) == sorted(_leaf_keys(Config))
    missing = undocumented()
    assert not missing, (f"configuration keys without a meaning: {', '.join(missing)}; write a docstring under each "
                         f"field in sfp_ray/config/schema.py, then run `{REGENERATE}` (or `make docs`)")


def test_configuration_page_is_current():
    page = DOCS / "configuration.md"
    committed = page.read_text(encoding="utf-8") if page.is_file() else ""
    if committed != config_reference_markdown():
        pytest.fail(f"docs/configuration.md differs from the configuration in sfp_ray/config/schema.py; regenerate it "
                    f"with `{REGENERATE}` (or `make docs`) and commit it", pytrace=False)


def test_configuration_page_lists_every_key_with_its_default():
    text = _read("configuration.md")
    for k in config_keys():
        assert f"| `{k.key}` | {k.type} | `{k.default}` |" in text, k.key
    assert f"| `federation.rounds` | int | `{Config().federation.rounds}` |" in text


def test_docgen_writes_and_checks(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    assert main(["--out", str(page), "--check"]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--out", str(page)]) == 0 and page.read_text() == config_reference_markdown()
    assert main(["--out", str(page), "--check"]) == 0


# --------------------------------------------------------------------------- reports.md


def documented_files() -> tuple[dict[str, list[str]], list[str]]:
    """``(columns per file, file names or patterns)`` of docs/reports.md.

    A heading naming files in backticks starts their section; each table row whose first
    cell is a backticked name documents a column of every file of that heading.
    """
    tables: dict[str, list[str]] = {}
    names: list[str] = []
    current: list[str] = []
    for line in _read("reports.md").splitlines():
        if line.startswith("#"):
            current = re.findall(r"`([^`\s]+\.[a-z]+)`", line)
            names += current
            for n in current:
                tables.setdefault(n, [])
        elif line.startswith("| `") and current:
            m = re.match(r"\| `([^`]+)` \|", line)
            assert m, line
            for n in current:
                tables[n].append(m.group(1))
    return tables, names


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, re.sub(r"<[^>]+>", "*", p)) for p in patterns)


def _compare_columns(file: str, written: list[str]) -> None:
    documented = documented_files()[0].get(file)
    assert documented is not None, f"docs/reports.md has no section for {file}"
    assert len(set(documented)) == len(documented), f"{file}: a column is documented twice"
    undocumented_cols = [c for c in written if c not in documented]
    not_written = [c for c in documented if c not in written]
    assert not undocumented_cols and not not_written, (
        f"{file}: columns written but not in docs/reports.md: {undocumented_cols}; "
        f"documented but not written: {not_written}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    sfp_ray.compare(["sfprompt", "fl_full"], overrides=TINY, seeds=[0, 1], executor="serial", out=out, plots=True)
    return out


@pytest.mark.slow  # several rounds or runs end to end
def test_every_file_of_a_run_folder_is_documented(run_dir):
    _, names = documented_files()
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert [f for f in files if not _matches(f, names)] == []
    # and the run wrote every documented file but the Ray executor's and the projection's
    expected = [n for n in names if "<" not in n and n not in ("resources.csv", "ray.log", "projection.csv")]
    assert [n for n in expected if n not in files] == []


@pytest.mark.slow  # several rounds or runs end to end
@pytest.mark.parametrize("file", ["summary.csv", "summary_by_seed.csv", "rounds.csv", "clients.csv", "timeline.csv",
                                  "costs.csv", "messages.csv"])
def test_csv_columns_are_the_documented_ones(run_dir, file):
    _compare_columns(file, list(pd.read_csv(run_dir / file, nrows=1).columns))


@pytest.mark.slow  # several rounds or runs end to end
def test_parquet_columns_are_the_documented_ones(run_dir):
    _compare_columns("costs.parquet", list(pd.read_parquet(run_dir / "costs.parquet").columns))


def test_projection_columns_are_the_documented_ones():
    # three blocks: sfl needs at least one left to the server after the 1 + 1 cut
    df = sfp_ray.project(load_config(overrides=[*TINY, "model.depth=3"]), methods=["sfprompt", "sfl", "fl_linear"])
    _compare_columns("projection.csv", list(df.columns))


def test_resources_columns_are_the_documented_ones(ray_session, tmp_path):
    """A one-round Ray run with one client actor writes resources.csv with the documented columns."""
    from sfp_ray.executors.ray import RayExecutor
    from sfp_ray.orchestrator import Orchestrator
    from sfp_ray.preparation import prepare_run
    from sfp_ray.reports import ReportSink

    cfg = load_config(overrides=[*TINY, "federation.rounds=1", "devices.mix={laptop: 1.0}", "ray.max_actors=1"])
    spec = prepare_run(cfg, "fl_linear")
    ex = RayExecutor()
    try:
        Orchestrator(spec, ex, [ReportSink(tmp_path, plots=False)]).run()
    finally:
        ex.close()
    df = pd.read_csv(tmp_path / "resources.csv")
    assert set(df["executor"]) == {"ray"} and df["round"].notna().any() and df["label"].notna().any()
    _compare_columns("resources.csv", list(df.columns))


# --------------------------------------------------------------------------- methods.md, architecture.md, links


def test_methods_page_covers_every_method_and_pruning_policy():
    from sfp_ray.methods import list_methods
    from sfp_ray.pruning import POLICIES

    text = _read("methods.md")
    assert [m for m in list_methods() if f"`{m}`" not in text] == []
    assert [p for p in POLICIES if f"| `{p}` |" not in text] == []
    for key in ("pruning.policy", "per_class", "skip_top", "score_at", "refresh_every", "every_round"):
        assert key in text, key


def test_architecture_page_names_every_module():
    text = _read("architecture.md")
    pkg = REPO / "sfp_ray"
    modules = sorted(p for p in pkg.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    packages = sorted(p.parent for p in pkg.rglob("__init__.py") if p.parent != pkg)
    missing = [str(p.relative_to(pkg)) for p in modules if p.name not in text]
    missing += [f"{p.name}/" for p in packages if f"{p.name}/" not in text]
    assert missing == [], f"docs/architecture.md does not mention {missing}"
    assert "```" in text and "activations" in text  # the data path of one round


def test_every_docs_path_mentioned_exists():
    sources = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "sfp_ray").rglob("*.py")),
               *sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py")),
               *sorted(p for p in (REPO / "cluster").rglob("*") if p.is_file())]
    mentioned = {m for p in sources for m in re.findall(r"docs/[A-Za-z0-9_.-]+\.md", p.read_text(errors="replace"))}
    assert {f"docs/{p}" for p in PAGES} <= mentioned  # the README lists every page
    assert sorted(m for m in mentioned if not (REPO / m).is_file()) == []


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", _read(page)):
            assert (DOCS / target).is_file(), f"docs/{page} links to {target}"


def test_same_reports_tells_a_changed_result_from_a_changed_timing(tmp_path):
    """``benchmarks/same_reports.py``, the check that a refactoring changed no result, can fail."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("same_reports", REPO / "benchmarks" / "same_reports.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    rows = {"method": ["sfprompt", "fl_full"], "test_accuracy": [0.5, 0.25], "wall_s": [1.0, 2.0]}
    pd.DataFrame(rows).to_csv(a / "rounds.csv", index=False)
    pd.DataFrame({**rows, "wall_s": [9.0, 9.0]}).to_csv(b / "rounds.csv", index=False)
    assert mod.main([str(a), str(b), "--files", "rounds.csv"]) == 0  # only the timing differs
    pd.DataFrame({**rows, "test_accuracy": [0.5, 0.26]}).to_csv(b / "rounds.csv", index=False)
    assert mod.main([str(a), str(b), "--files", "rounds.csv"]) == 1
    assert any("test_accuracy" in line for line in mod.compare(a / "rounds.csv", b / "rounds.csv"))
