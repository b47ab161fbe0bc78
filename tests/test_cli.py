import json
import subprocess
import sys

from galaxy_infer.cli import build_parser, main


def test_info_json_gives_input_shape_and_schema_version(tiny_model, capsys):
    assert main(["info", str(tiny_model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_shape"] == [3, 64, 64] and info["schema_version"] == "1"


def test_bundled_models_are_named_by_their_name(capsys):
    assert main(["info", "int8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"].endswith("-int8") and info["precision"] == "int8"
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"].endswith("default.onnx")


def test_info_refuses_a_bad_model(tmp_path, capsys):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert main(["info", str(tmp_path / "x.onnx")]) == 1
    assert "not a loadable ONNX" in capsys.readouterr().err


def test_help_explains_every_classify_option():
    sub = build_parser()._subparsers._group_actions[0].choices["classify"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, action.dest


def test_importing_the_inference_side_loads_no_torch():
    code = ("import sys, galaxy_infer.cli, galaxy_infer.pipeline, galaxy_infer.demo, jobs; "
            "import importlib, pkgutil; [importlib.import_module('jobs.' + m.name) for m in "
            "pkgutil.iter_modules(jobs.__path__)]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_classify_refuses_an_int8_model_on_cuda_before_any_work(tmp_path, capsys):
    assert main(["classify", str(tmp_path), "--out", str(tmp_path / "catalog"), "--model", "int8",
                 "--device", "cuda"]) == 1
    assert "int8 model, which runs on CPUs only" in capsys.readouterr().err
    assert not (tmp_path / "catalog").exists()
