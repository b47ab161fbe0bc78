"""Ray Tune search: a tiny budget (2 trials, 1 epoch, a few images) runs end to end on 2 CPUs."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("ray.tune")

pytestmark = [pytest.mark.torch, pytest.mark.ray, pytest.mark.shared_data]


def test_tune_smoke(shared_data, tmp_path):
    from training.config import Config, override
    from training.tune import tune

    config = override(Config(), data={"root": str(shared_data), "limit": 40, "cache_dir": "",
                                      "sets": ["gz1_sdss", "gz2_votes"]},
                      train={"batch_size": 32}, output={"run_dir": str(tmp_path / "run")})
    best = tune(config, num_samples=2, epochs=1, storage=str(tmp_path / "tune"))
    assert best["trials"] == 2
    assert best["best_params"]["width"] in (8, 12, 16)
    assert best["best_val_loss"] > 0
