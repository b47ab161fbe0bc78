import json

import numpy as np
import onnxruntime as ort
import pytest

from galaxy_infer.errors import ModelError
from galaxy_infer.model import (Predictor, bundled_model_path, load_model_info, resolve_device, resolve_model,
                                run_device)
from galaxy_infer.preprocess import Recipe
from tests.onnx_models import build_tiny_model


def test_metadata_describes_the_model(tiny_model):
    info = load_model_info(tiny_model)
    assert info.model_id == "tiny-test-0.0.1"
    assert info.input_shape == [3, 64, 64]
    assert info.describe()["schema_version"] == "1"
    assert len(info.sha256) == 64


@pytest.mark.parametrize("kwargs, message", [
    ({"metadata": ""}, "no 'galaxy_infer' metadata"),
    ({"metadata": "{not json"}, "malformed"),
    ({"outputs": 10}, "output shape"),
])
def test_models_that_do_not_fit_are_refused_before_work(tmp_path, kwargs, message):
    path = build_tiny_model(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(ModelError, match=message):
        load_model_info(path)


def test_wrong_schema_version_and_input_shape_are_refused(tmp_path, tiny_model):
    doc = json.loads(ort.InferenceSession(str(tiny_model)).get_modelmeta().custom_metadata_map["galaxy_infer"])
    with pytest.raises(ModelError, match="schema 99"):
        load_model_info(build_tiny_model(tmp_path / "v.onnx", metadata=json.dumps({**doc, "schema_version": "99"})))
    doc["recipe"]["input_size"] = 96
    with pytest.raises(ModelError, match="input shape"):
        load_model_info(build_tiny_model(tmp_path / "s.onnx", metadata=json.dumps(doc)))


def test_missing_and_non_onnx_files_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model_info(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a loadable ONNX"):
        load_model_info(tmp_path / "junk.onnx")


def test_bundled_names_resolve_to_package_files_and_paths_pass_through(tmp_path, monkeypatch):
    assert resolve_model("int8") == str(bundled_model_path("int8"))
    assert resolve_model("default") == str(bundled_model_path())
    assert resolve_model(tmp_path / "m.onnx") == str(tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "int8").write_bytes(b"")
    assert resolve_model("int8") == "int8"


def test_fixed_batches_pad_the_last_and_match_one_by_one(tiny_model):
    images = np.random.default_rng(0).random((10, 3, 64, 64), dtype=np.float32)
    batched = Predictor(tiny_model, batch_size=4, num_threads=1).predict(images)
    single = Predictor(tiny_model, batch_size=1, num_threads=1).predict(images)
    assert batched.shape == (10, 37)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_a_model_with_a_fixed_batch_dimension_runs(tmp_path):
    path = build_tiny_model(tmp_path / "fixed.onnx", fixed_batch=8, recipe=Recipe())
    out = Predictor(path, batch_size=8).predict(np.zeros((3, 3, 64, 64), np.float32))
    assert out.shape == (3, 37)


def test_cuda_fails_loudly_when_not_really_active(tiny_model):
    if "CUDAExecutionProvider" in ort.get_available_providers() and resolve_device("auto") == "cuda":
        pytest.skip("a real GPU is present; see the GPU notes in the README")
    with pytest.raises(ModelError, match="CUDA was asked for"):
        Predictor(tiny_model, device="cuda")


def test_an_int8_model_runs_on_cpus_only():
    """On CUDA the int8 model's fractions differed from its CPU numbers by 0.04 (H200, benchmarks.gpu)."""
    int8, default = load_model_info(bundled_model_path("int8")), load_model_info(bundled_model_path())
    assert [run_device(int8, d) for d in ("auto", "cpu")] == ["cpu", "cpu"]
    with pytest.raises(ModelError, match="int8 model, which runs on CPUs only.*use gz2-compact-1.2.0 on GPUs"):
        run_device(int8, "cuda")
    assert [run_device(default, d) for d in ("auto", "cpu", "cuda")] == ["auto", "cpu", "cuda"]


@pytest.mark.skipif(resolve_device("auto") != "cuda", reason="needs onnxruntime-gpu and a GPU (python -m benchmarks.gpu)")
def test_cuda_gives_the_cpu_numbers():
    """float32 on the GPU, not TF32: the H200 gave logits within 6e-6 of the CPU's."""
    images = np.random.default_rng(0).random((64, 3, 64, 64), np.float32)
    cpu, cuda = (Predictor(bundled_model_path(), device=d).predict(images) for d in ("cpu", "cuda"))
    np.testing.assert_allclose(cuda, cpu, atol=5e-5)


def test_auto_device_is_cpu_without_a_gpu(tiny_model, monkeypatch):
    if resolve_device("auto") == "cuda":
        pytest.skip("a real GPU is present")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError):
        resolve_device("tpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what Ray sets for a task holding a (here logical) GPU
    predictor = Predictor(tiny_model, device="auto")
    assert (predictor.device, predictor.providers[0]) == ("cpu", "CPUExecutionProvider")


def test_a_model_names_or_embeds_its_tree_and_flags(tmp_path):
    from galaxy_infer.model import metadata_document
    from galaxy_infer.schema import Flag
    from galaxy_infer.trees import GZ_DESI, from_zoobot

    doc = metadata_document("desi", "1", Recipe(), {"merger": 0.4, "major_disturbance": 0.6}, GZ_DESI,
                            output_kind="dirichlet", runtime={"batch_size": 16, "task_rows": 64})
    assert json.loads(doc)["tree"] == "gz_desi"
    info = load_model_info(build_tiny_model(tmp_path / "d.onnx", metadata=doc, outputs=GZ_DESI.n_answers))
    assert info.tree == GZ_DESI and info.output_kind == "dirichlet" and info.runtime["task_rows"] == 64
    assert info.thresholds == {"merger": 0.4, "major_disturbance": 0.6}
    custom = from_zoobot("rings", {"ring": ["yes", "no"], "ring-type": ["inner", "outer"]},
                         {"ring": None, "ring-type": "ring_yes"})
    doc = metadata_document("r", "1", Recipe(), {}, custom, flags=(Flag("inner", (("ring_type", "inner"),), threshold=0.2),))
    info = load_model_info(build_tiny_model(tmp_path / "r.onnx", metadata=doc, outputs=4))
    assert info.tree == custom and info.describe()["tree"]["layout"][1]["asked_after"] == "ring=yes"
    bad = json.loads(doc)
    bad["flags"][0]["answers"] = [["ring_type", "middle"]]
    with pytest.raises(ModelError, match="not in its tree"):
        load_model_info(build_tiny_model(tmp_path / "b.onnx", metadata=json.dumps(bad), outputs=4))
    with pytest.raises(ModelError, match="output shape"):
        load_model_info(build_tiny_model(tmp_path / "s.onnx", metadata=doc, outputs=37))
