"""The same cutouts give the same catalog whatever the batch size, worker count and input order (issue 26).

Padding a last short batch, splitting inputs over tasks and the order rows arrive in must not
leak into the numbers: every fraction and probability agrees within 1e-6 and every flag exactly.
"""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.synthetic import write_sample

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.ray

LAYOUTS = {
    "batch 1, 1 worker": dict(batch_size=1, num_workers=1, task_rows=8),
    "batch 7, 2 workers": dict(batch_size=7, num_workers=2, task_rows=9),
    "batch 256, 2 workers, shuffled": dict(batch_size=256, num_workers=2, task_rows=256, shuffle=True),
}


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory, local_ray, shared_data_or_none) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("same")
    files = [str(p) for p in write_sample(root / "in", n=30, seed=3)]
    if shared_data_or_none is not None:
        files += [str(p) for p in sorted((shared_data_or_none / "gz1_sdss" / "images").glob("*.jpg"))[:20]]
    out = {}
    for name, layout in LAYOUTS.items():
        inputs = list(files)
        if layout.pop("shuffle", False):
            random.Random(0).shuffle(inputs)
        target = root / name.replace(" ", "_").replace(",", "")
        classify(RunConfig(inputs=inputs, out=str(target), progress=False, **layout))
        out[name] = pd.read_parquet(target).set_index("object_id").sort_index()
    return out


@pytest.fixture(scope="module")
def shared_data_or_none():
    """Real cutouts join the synthetic ones where ../shared/data is present."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def test_every_layout_gives_the_same_numbers(catalogs):
    reference, *others = catalogs.values()
    assert (reference.status == "ok").all() and len(reference) >= 31
    numbers = [c for c in reference.columns if c.endswith(("_fraction", "_prob", "_asked"))]
    flags = [c for c in reference.columns if c.endswith("_flag")]
    assert numbers and flags
    for other in others:
        assert list(other.index) == list(reference.index)
        assert np.abs(other[numbers].to_numpy() - reference[numbers].to_numpy()).max() <= 1e-6
        assert (other[flags] == reference[flags]).all().all()
