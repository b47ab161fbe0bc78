"""The training product never imports its research tools (training/experiments/)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1] / "training"
EXPERIMENTS = ("ablate", "compare", "crossval", "finetune", "ring_probe", "robustness")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_product_modules_do_not_import_experiments():
    product = list(TRAINING.glob("*.py"))
    assert product
    for path in product:
        bad = {m for m in imported_modules(path) if m.startswith("training.experiments")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_experiments_live_under_training_experiments():
    assert {p.stem for p in (TRAINING / "experiments").glob("*.py")} - {"__init__"} == set(EXPERIMENTS)
    assert not any((TRAINING / f"{name}.py").exists() for name in EXPERIMENTS)


@pytest.mark.torch
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_as_a_module(name):
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-m", f"training.experiments.{name}", "--help"],
                            capture_output=True, text=True, cwd=TRAINING.parent)
    assert result.returncode == 0, result.stderr
    assert f"python -m training.experiments.{name}" in result.stdout
