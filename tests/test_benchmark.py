"""The benchmark's own parts on a few files; the full run is `make bench`."""
import subprocess
import sys
import time

import pytest

from benchmarks.run import PeakMemory, combined_limit, decode_limit, model_limit, replicate
from galaxy_infer.model import bundled_model_path
from galaxy_infer.preprocess import Recipe


def test_replicate_and_decode_limit_on_real_cutouts(tmp_path, shared_data):
    files = replicate(tmp_path / "cutouts", 40)
    assert len(files) == 40 and len(set(files)) == 40
    result = decode_limit(files, Recipe(), processes=2)
    assert result["images"] == 40 and result["processes"] == 2
    assert result["images_per_second"] > 0 and result["us_per_image"] > 0


def test_model_limit_times_every_process_and_the_combined_limit_adds_costs():
    result = model_limit(bundled_model_path("int8"), processes=2, batches=2, batch_size=8)
    assert result["images"] == 32 and result["images_per_second"] > 0 and result["cpu_us_per_image"] > 0
    assert combined_limit(3000.0, 12000.0) == pytest.approx(2400.0)


def test_peak_memory_counts_child_processes():
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', " \
           "'x = bytearray(200 * 2**20); import time; time.sleep(1.5)']); c.wait()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with PeakMemory(proc.pid, interval=0.1) as memory:
        proc.wait()
        time.sleep(0.1)
    assert memory.peak > 200 * 2**20
