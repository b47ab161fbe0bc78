"""The benchmark's own parts on a few files; the full run is `make bench`."""
import subprocess
import sys
import time

from benchmarks.run import PeakMemory, decode_ceiling, replicate
from galaxy_infer.preprocess import Recipe


def test_replicate_and_decode_ceiling_on_real_cutouts(tmp_path, shared_data):
    files = replicate(tmp_path / "cutouts", 40)
    assert len(files) == 40 and len(set(files)) == 40
    result = decode_ceiling(files, Recipe(), processes=2)
    assert result["images"] == 40 and result["images_per_second"] > 0


def test_peak_memory_counts_child_processes():
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', " \
           "'x = bytearray(200 * 2**20); import time; time.sleep(1.5)']); c.wait()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with PeakMemory(proc.pid, interval=0.1) as memory:
        proc.wait()
        time.sleep(0.1)
    assert memory.peak > 200 * 2**20
