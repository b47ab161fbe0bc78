"""Gallery of real cutouts behind a real catalog: selection, rendering with the run's recipe, PNG and HTML."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galaxy_infer.cli import main
from galaxy_infer.gallery import PLACEHOLDER, gallery_array, render, select, write_gallery
from galaxy_infer.model import bundled_model_path, load_model_info
from galaxy_infer.preprocess import preprocess
from galaxy_infer.readers import read_cutout
from tests.catalogs import build_catalog, gz2_manifest

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def catalog(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    extra = [{"path": str(shared_data / "fits" / "decals_dr5_example_a.fits"), "object_id": "decals_a"},
             {"path": str(folder / "gone.jpg"), "object_id": "gone", "ra": 150.0, "dec": 2.0}]
    return build_catalog(gz2_manifest(shared_data, 24, folder, extra), folder / "catalog")


def test_select_filters_sorts_descending_and_cuts(catalog):
    chosen = select(catalog, sort="smooth_or_featured_smooth_fraction", where="status == 'ok'", top=5)
    frame = pd.read_parquet(catalog).query("status == 'ok'")
    assert chosen.matched == len(frame) == 25
    expected = frame.sort_values("smooth_or_featured_smooth_fraction", ascending=False).object_id.head(5)
    assert chosen.rows.object_id.tolist() == expected.tolist()
    assert chosen.recipes and all(r == load_model_info(str(bundled_model_path())).recipe for r in chosen.recipes.values())
    galaxy10 = select(catalog, sort="galaxy10_confidence", where="galaxy10_class == 'round smooth'", top=3)
    assert set(galaxy10.rows.galaxy10_class) == {"round smooth"}


def test_model_view_is_exactly_the_model_input_at_a_larger_size(catalog, shared_data):
    recipe = load_model_info(str(bundled_model_path())).recipe
    fits = str(shared_data / "fits" / "decals_dr5_example_a.fits")
    tile, problem = render(fits, recipe, size=recipe.input_size, view="model")
    model_input = preprocess(read_cutout(fits, recipe).pixels, recipe)
    assert problem is None and tile.shape == (recipe.input_size, recipe.input_size, 3)
    expected = (np.clip(model_input.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(tile.astype(int) - expected).max() <= 1


def test_missing_cutout_is_a_placeholder_with_its_reason(tmp_path):
    from galaxy_infer.preprocess import Recipe

    tile, problem = render(str(tmp_path / "nope.fits"), Recipe(), size=32)
    assert problem == "file not found"
    assert (tile == PLACEHOLDER).all()


def test_png_html_and_array(catalog, tmp_path):
    png, page, chosen = write_gallery(catalog, tmp_path / "g", sort="ra", where="object_id in ['gone', 'decals_a'] "
                                      "or ra > 0", top=30, columns=6, size=96)
    assert len(chosen.rows) == 26  # 24 positioned galaxies + the missing file; the FITS has a WCS position
    image = Image.open(png)
    assert image.size[0] == 6 * (96 + 6) + 6 and image.mode == "RGB"
    text = Path(page).read_text()
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(thumbnails) == 26 and "http" not in text.split("<main>")[1]
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))).size == (256, 256)
    for row in chosen.rows.itertuples():
        assert row.object_id in text
    assert "cutout unavailable: file not found" in text and "RA 150.00000  Dec +2.00000" in text
    array = gallery_array(catalog, sort="ra", top=4, columns=2, size=64)
    assert array.dtype == np.uint8 and array.shape[2] == 3 and array.shape[1] == 2 * 70 + 6


def test_cli_gallery(catalog, tmp_path, capsys):
    out = tmp_path / "rings"
    assert main(["gallery", str(catalog), "--sort", "odd_ring_prob", "--where", "status == 'ok'", "--top", "8",
                 "--out", str(out)]) == 0
    assert (tmp_path / "rings.png").is_file() and (tmp_path / "rings.html").is_file()
    assert "8 of 25 rows" in capsys.readouterr().out
    assert main(["gallery", str(catalog), "--sort", "no_such_column", "--out", str(out)]) == 1


def test_relative_source_paths_are_taken_from_root(shared_data):
    first = pd.read_csv(shared_data / "gz2_votes" / "labels.csv").file[0]
    frame = pd.DataFrame({"object_id": ["a"], "source_path": [f"gz2_votes/{first}"], "ra": [1.0], "dec": [2.0],
                          "status": ["ok"]})
    found = gallery_array(frame, size=96, root=shared_data)[6:20, 6:102]  # the tile top, above the reason
    missing = gallery_array(frame, size=96)[6:20, 6:102]
    assert (missing == PLACEHOLDER).all() and not (found == PLACEHOLDER).all()
