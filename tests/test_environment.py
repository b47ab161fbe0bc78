"""What a catalog records of the machine that made it: package versions and the CPU's int8 kernel."""
from __future__ import annotations

import json

import pytest

from galaxy_infer.catalog import VERSIONS_KEY, file_metadata
from galaxy_infer.cli import main
from galaxy_infer.environment import int8_kernels, versions
from galaxy_infer.model import bundled_model_path, load_model_info


@pytest.mark.parametrize(("flags", "kernel"), [
    ({"avx2", "avx512_vnni", "amx_int8"}, "AMX"),
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),
    ({"avx2", "avx_vnni"}, "AVX-VNNI"),
    ({"avx2", "fma"}, "AVX2 without VNNI"),
])
def test_int8_kernel_follows_the_cpu_flags(flags, kernel):
    assert int8_kernels(flags, "x86_64").startswith(kernel)


def test_int8_kernel_on_other_architectures_says_so():
    assert "not x86" in int8_kernels(set(), "aarch64")


def test_versions_name_the_runtime_that_shapes_the_numbers():
    found = versions()
    assert {"galaxy-infer", "numpy", "pillow"} <= set(found)
    assert "onnxruntime" in found or "onnxruntime-gpu" in found


def test_catalog_metadata_and_info_record_them(capsys):
    metadata = file_metadata(load_model_info(bundled_model_path()), "run-1")
    assert json.loads(metadata[VERSIONS_KEY]) == versions()
    assert main(["info", "int8", "--json"]) == 0
    machine = json.loads(capsys.readouterr().out)["this_machine"]
    assert machine == {"int8_kernels": int8_kernels(), "versions": versions()}
