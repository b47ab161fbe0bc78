import numpy as np
import pytest

from galaxy_infer.errors import InputError
from galaxy_infer.preprocess import Recipe, asinh_stretch, preprocess

RECIPE = Recipe(input_size=32, crop_fraction=0.5)


def test_rgb_uint8_scales_to_unit_interval_and_crops_the_centre():
    image = np.zeros((100, 100, 3), np.uint8)
    image[20:80, 20:80] = 255
    out = preprocess(image, RECIPE)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_greyscale_and_16_bit_are_repeated_to_three_channels():
    grey = preprocess(np.full((50, 50), 128, np.uint8), RECIPE)
    deep = preprocess(np.full((50, 50, 1), 65535, np.uint16), RECIPE)
    assert grey.shape == deep.shape == (3, 32, 32)
    np.testing.assert_allclose(grey, 128 / 255, rtol=1e-5)
    np.testing.assert_allclose(deep, 1.0, rtol=1e-5)


def test_fits_bands_are_stretched_and_nan_pixels_filled():
    rng = np.random.default_rng(0)
    bands = rng.normal(1.0, 0.1, (3, 60, 60)).astype(np.float32)
    bands[0, :5, :5] = np.nan
    bands[1, 0, 0] = np.inf
    out = preprocess(bands, RECIPE)
    assert out.shape == (3, 32, 32) and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_single_fits_band_is_repeated_and_wrong_band_count_refused():
    out = preprocess(np.ones((1, 40, 40), np.float32), RECIPE)
    assert out.shape == (3, 32, 32)
    with pytest.raises(InputError, match="5 bands"):
        preprocess(np.ones((5, 40, 40), np.float32), RECIPE)


def test_asinh_stretch_is_monotonic_and_bounded():
    band = np.linspace(-1, 100, 1000, dtype=np.float32).reshape(10, 100)
    out = asinh_stretch(band, Recipe())
    assert np.all(np.diff(out.ravel()) >= 0)
    assert out.min() == 0 and out.max() == pytest.approx(1)


def test_decode_size_lets_a_424_pixel_jpeg_decode_at_quarter_scale():
    w, h = Recipe(input_size=64, crop_fraction=0.6).decode_size(424, 424)
    assert w <= 106 and w * 0.6 >= 64 * 0.95


def test_recipe_round_trips_through_json():
    import json

    recipe = Recipe(input_size=48)
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    with pytest.raises(ValueError, match="unknown"):
        Recipe.from_dict({"input_size": 48, "colour": "yes"})
