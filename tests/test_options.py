"""One set of run options: every RunOptions field is an option of classify, ingest and both jobs, with one help text."""
from __future__ import annotations

import argparse
import importlib.util
from dataclasses import fields
from pathlib import Path

import pytest

from galaxy_infer.cli import build_parser
from galaxy_infer.ingest import IngestConfig
from galaxy_infer.options import RunOptions, options_from_args, profile_keys
from galaxy_infer.pipeline import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def job_parser(name: str) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def parsers() -> dict[str, argparse.ArgumentParser]:
    sub = build_parser()._subparsers._group_actions[0].choices
    return {"classify": sub["classify"], "ingest": sub["ingest"],
            "classify_catalog": job_parser("classify_catalog"), "nightly_ingest": job_parser("nightly_ingest")}


def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help for a in parser._actions if a.dest != "help"}


def test_every_run_option_is_everywhere_with_one_help_text():
    found = {name: helps(p) for name, p in parsers().items()}
    for key in profile_keys():
        texts = {name: h.get(key) for name, h in found.items()}
        assert None not in texts.values(), (key, texts)
        assert len(set(texts.values())) == 1, (key, texts)


def test_profile_keys_are_the_run_options_and_configs_share_them():
    assert profile_keys() == {f.name for f in fields(RunOptions)} - {"shard_fields", "limits", "run_id"}
    assert issubclass(RunConfig, RunOptions) and issubclass(IngestConfig, RunOptions)


@pytest.mark.parametrize("command", ["classify", "ingest"])
def test_parsed_options_build_the_run_config(command):
    argv = {"classify": ["classify", "in", "--out", "o"], "ingest": ["ingest", "--inbox", "i", "--catalog", "c"]}[command]
    args = build_parser().parse_args([*argv, "--batch-size", "7", "--gpu-wait-seconds", "5", "--no-progress",
                                      "--image-field", "stamps", "--anonymous"])
    values = options_from_args(args)
    assert (values["batch_size"], values["gpu_wait_seconds"], values["progress"], values["anonymous"]) == (7, 5.0, False, True)
    assert values["shard_fields"].image == "stamps"
    RunOptions(**values)
