"""Cross-matching a real catalog (real SDSS cutouts with their positions) with a small catalog of known positions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galaxy_infer.cli import main
from galaxy_infer.crossmatch import crossmatch, lsdb_crossmatch, to_hats
from tests.catalogs import build_catalog, gz2_manifest

pytestmark = pytest.mark.shared_data
OFFSET_ARCSEC = 0.5


@pytest.fixture(scope="module")
def catalog(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xmatch")
    extra = [{"path": str(folder / "gone.jpg"), "object_id": "gone"}]  # an error row without a position
    return build_catalog(gz2_manifest(shared_data, 40, folder, extra), folder / "catalog")


@pytest.fixture(scope="module")
def known(shared_data) -> pd.DataFrame:
    """Six catalogued galaxies moved 0.5 arcsec east, one moved 3 arcsec north, two empty patches of sky."""
    labels = pd.read_csv(shared_data / "gz2_votes" / "labels.csv").head(40)
    near = labels.iloc[[0, 5, 11, 17, 23, 39]]
    far = labels.iloc[[30]]
    return pd.DataFrame({
        "name": [f"known_{i}" for i in near.dr7objid] + ["moved_3_arcsec", "empty_1", "empty_2"],
        "expected": [str(i) for i in near.dr7objid] + [None, None, None],
        "RAJ2000": [*(near.ra + OFFSET_ARCSEC / 3600 / np.cos(np.radians(near.dec))), far.ra.iloc[0], 10.0, 200.0],
        "DEJ2000": [*near.dec, far.dec.iloc[0] + 3 / 3600, -40.0, -60.0],
    })


def check(matches: pd.DataFrame, known: pd.DataFrame) -> None:
    expected = known.dropna(subset=["expected"])
    assert sorted(matches.object_id) == sorted(expected.expected)
    assert (matches.object_id == matches.expected).all()
    assert np.allclose(matches.separation_arcsec, OFFSET_ARCSEC, atol=1e-3)
    assert matches.status.eq("ok").all() and "smooth_or_featured_smooth_fraction" in matches


def test_astropy_crossmatch(catalog, known):
    matches = crossmatch(catalog, known, radius_arcsec=2, other_ra="RAJ2000", other_dec="DEJ2000")
    check(matches, known)
    wider = crossmatch(catalog, known, radius_arcsec=4, other_ra="RAJ2000", other_dec="DEJ2000")
    assert "moved_3_arcsec" in set(wider.name) and len(wider) == 7


def test_cli_crossmatch(catalog, known, tmp_path, capsys):
    other = tmp_path / "known.parquet"
    known.to_parquet(other)
    out = tmp_path / "matches.parquet"
    assert main(["crossmatch", str(catalog), str(other), "--radius-arcsec", "2", "--other-ra", "RAJ2000",
                 "--other-dec", "DEJ2000", "--out", str(out)]) == 0
    assert "6 matches within 2.0 arcsec" in capsys.readouterr().out
    check(pd.read_parquet(out), known)


def test_hats_export_and_lsdb_crossmatch(catalog, known, tmp_path):
    lsdb = pytest.importorskip("lsdb")
    hats = to_hats(catalog, tmp_path / "gz2_hats")
    exported = lsdb.open_catalog(str(hats)).compute()
    assert len(exported) == 40 and exported.status.eq("ok").all()  # the row without a position is left out
    matches = lsdb_crossmatch(hats, known, radius_arcsec=2, other_ra="RAJ2000", other_dec="DEJ2000")
    check(matches, known)
