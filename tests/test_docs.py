"""The docs site builds with broken links as errors, and its runnable command examples run."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_BLOCK = re.compile(r"<!-- run -->\n```(?:bash|sh)\n(.*?)\n```", re.S)


def env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH (galaxy-infer, mkdocs), this checkout importable."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                         "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def run_blocks(path: Path) -> list[str]:
    return RUN_BLOCK.findall(path.read_text())


def test_site_builds_strict_and_the_reference_lists_every_option(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    commands = (tmp_path / "commands" / "index.html").read_text()
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for _, parser in gen.parsers():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for p in [parser, *(c for s in subs for c in s.choices.values())]:
            for action in p._actions:
                for option in action.option_strings:
                    assert option in commands, (p.prog, option)
    assert (tmp_path / "model-card" / "index.html").is_file()


def test_readme_is_short_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target


def test_every_run_marker_precedes_a_shell_block():
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        assert path.read_text().count("<!-- run -->") == len(run_blocks(path)), path.name


@pytest.mark.ray
@pytest.mark.parametrize("page", sorted(p.name for p in [ROOT / "README.md", *DOCS.glob("*.md")] if run_blocks(p)))
def test_runnable_examples_run(page, tmp_path):
    """A page's ``<!-- run -->`` blocks, in order, in one scratch folder beside a link to the shared data."""
    path = ROOT / page if page == "README.md" else DOCS / page
    blocks = run_blocks(path)
    if any("../shared/data" in b for b in blocks) and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{page}:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
