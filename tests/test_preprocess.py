import json
from pathlib import Path

import numpy as np
import pytest

from galaxy_infer.errors import ErrorKind, InputError
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
    recipe = Recipe(input_size=48)
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    with pytest.raises(ValueError, match="unknown"):
        Recipe.from_dict({"input_size": 48, "colour": "yes"})



def test_recipes_without_a_resampling_keep_the_single_crop_resize_and_their_json():
    old = {"asinh_softening": 0.1, "channels": 3, "clip_percentiles": [0.5, 99.5], "crop_fraction": 0.6,
           "input_size": 64, "stretch": "asinh", "version": "1"}
    recipe = Recipe.from_dict(old)
    assert recipe.resampling == "crop-resize" and json.loads(recipe.to_json()) == old
    zoobot = Recipe(input_size=48, crop_fraction=0.8, resampling="zoobot")
    assert Recipe.from_dict(json.loads(zoobot.to_json())) == zoobot
    with pytest.raises(ValueError, match="unknown resampling 'lanczos'"):
        Recipe.from_dict({**old, "resampling": "lanczos"})


def test_the_bundled_models_recipe_is_unchanged():
    from galaxy_infer.model import bundled_model_path, load_model_info

    recipe = load_model_info(bundled_model_path()).recipe
    assert recipe == Recipe() and "resampling" not in recipe.to_json()


def test_zoobot_view_shows_the_same_central_part_as_the_crop_and_decodes_at_full_size():
    ramp = np.tile(np.arange(200, dtype=np.uint8), (120, 1))  # pixel value = column, 200 x 120
    for pixels in (ramp, np.dstack([ramp] * 3)):
        once = preprocess(pixels, Recipe(input_size=40, crop_fraction=0.8)) * 255
        zoobot = preprocess(pixels, Recipe(input_size=40, crop_fraction=0.8, resampling="zoobot")) * 255
        assert zoobot.shape == once.shape == (3, 40, 40)
        np.testing.assert_allclose(zoobot[:, 20], once[:, 20], atol=2.5)  # columns 52..148 of the cutout
        assert abs(zoobot[0, 0, 0] - 52) < 3 and abs(zoobot[0, 0, -1] - 148) < 3
    assert Recipe(input_size=224, crop_fraction=1 / 1.2, resampling="zoobot").decode_size(424, 424) == (424, 424)


def test_zoobot_view_refuses_strips_whose_full_resize_would_be_unbounded():
    recipe = Recipe(input_size=224, crop_fraction=1 / 1.2, resampling="zoobot")
    assert preprocess(np.zeros((10, 160, 3), np.uint8), recipe).shape == (3, 224, 224)
    with pytest.raises(InputError, match="10x161 pixels.*aspect ratios up to 16") as caught:
        preprocess(np.zeros((161, 10, 3), np.uint8), recipe)
    assert caught.value.kind == ErrorKind.UNSUPPORTED


# --- identity with the implementation before the per-cutout speed work (issue 13) ---------------
# A frozen copy of the decode and preprocessing as they were, so any later speed work that changes
# a value the models were trained on fails here.

def _reference_read_raster(path: str, recipe: Recipe) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
            im.draft(im.mode, recipe.decode_size(*im.size))
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[:, :, None]
        if im.mode in ("L", "RGB"):
            return np.asarray(im)[:, :, None] if im.mode == "L" else np.asarray(im)
        if im.mode in ("LA", "1"):
            return np.asarray(im.convert("L"))[:, :, None]
        return np.asarray(im.convert("RGB"))


def _reference_preprocess(pixels: np.ndarray, recipe: Recipe) -> np.ndarray:
    from PIL import Image

    def resize(plane):
        side = min(plane.width, plane.height) * recipe.crop_fraction
        box = ((plane.width - side) / 2, (plane.height - side) / 2, (plane.width + side) / 2,
               (plane.height + side) / 2)
        return plane.resize((recipe.input_size,) * 2, Image.Resampling.BILINEAR, box=box, reducing_gap=None)

    def to_channels(planes):
        return np.ascontiguousarray(planes if planes.shape[0] == recipe.channels
                                    else np.repeat(planes, recipe.channels, axis=0), dtype=np.float32)

    if np.issubdtype(pixels.dtype, np.integer):
        pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
        if pixels.dtype == np.uint8 and pixels.shape[2] == 3 and recipe.channels == 3:
            out = np.asarray(resize(Image.fromarray(pixels, "RGB")), dtype=np.float32).transpose(2, 0, 1)
            return np.multiply(out, 1.0 / 255.0, out=np.ascontiguousarray(out))
        scale = 1.0 / float(np.iinfo(pixels.dtype).max)
        planes = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
        resized = [np.asarray(resize(Image.fromarray(planes[:, :, c].astype(np.float32), "F")))
                   for c in range(planes.shape[2])]
        return to_channels(np.stack(resized) * np.float32(scale))
    out = []
    for band in pixels.astype(np.float32, copy=False):
        finite = np.isfinite(band)
        if not finite.all():
            band = np.where(finite, band, np.median(band[finite]))
        lo, hi = np.percentile(band, recipe.clip_percentiles)
        if hi > lo:
            a = recipe.asinh_softening
            band = (np.arcsinh((np.clip(band, lo, hi) - lo) / (hi - lo) / a) / np.arcsinh(1.0 / a)).astype(np.float32)
        else:
            band = np.zeros_like(band, dtype=np.float32)
        out.append(np.asarray(resize(Image.fromarray(band, "F"))))
    return to_channels(np.stack(out))


def _cutouts_of_every_kind(data, folder) -> list:
    """Real cutouts of each kind the readers take; 16-bit, grey, RGBA and CMYK ones are made from real pixels."""
    from astropy.io import fits
    from PIL import Image

    jpegs = [sorted((data / d / "images").glob("*.jpg"))[:3]
             for d in ("gz1_sdss", "gz2_votes", "gzdecals_rings", "gz_kaggle_spiral")]
    pngs = sorted((data / "fits").glob("decals_dr5_example_*.png"))
    real_fits = [data / "fits" / n for n in ("decals_dr5_example_a.fits", "decals_dr5_example_b.fits",
                                             "hst_AEGIS_F606w_images_01.fits")]
    band = fits.getdata(real_fits[0])[1].astype(np.float64)
    deep = (np.clip((band - band.min()) / (np.percentile(band, 99.9) - band.min()), 0, 1) * 65535).astype(np.uint16)
    made = {"sixteen_bit.png": Image.fromarray(deep), "grey.png": Image.open(jpegs[0][0]).convert("L"),
            "grey.jpg": Image.open(jpegs[2][0]).convert("L"), "rgba.png": Image.open(pngs[0]).convert("RGBA"),
            "cmyk.jpg": Image.open(jpegs[1][0]).convert("CMYK")}
    for name, image in made.items():
        image.save(folder / name)
    assert Image.open(folder / "sixteen_bit.png").mode.startswith("I")
    return [str(p) for p in [*sum(jpegs, []), *pngs, *real_fits, *(folder / n for n in made)]]


@pytest.mark.shared_data
@pytest.mark.parametrize("recipe", [Recipe(), Recipe(input_size=32, crop_fraction=0.5)], ids=["default", "small"])
def test_outputs_are_identical_to_the_reference_implementation(shared_data, tmp_path, recipe):
    from galaxy_infer.pipeline import read_and_preprocess
    from galaxy_infer.readers import FITS_SUFFIXES, read_cutout, read_fits

    paths = _cutouts_of_every_kind(shared_data, tmp_path)
    expected = np.stack([_reference_preprocess(read_fits(Path(p).read_bytes()).pixels if p.endswith(FITS_SUFFIXES)
                                               else _reference_read_raster(p, recipe), recipe) for p in paths])
    training = np.stack([preprocess(read_cutout(p, recipe).pixels, recipe) for p in paths])
    batch = read_and_preprocess({"object_id": np.array(paths, dtype=object), "source_path": np.array(paths, dtype=object),
                                 "ra": np.full(len(paths), np.nan), "dec": np.full(len(paths), np.nan)}, recipe)
    assert list(batch["error"]) == [""] * len(paths)
    np.testing.assert_array_equal(training, expected)
    np.testing.assert_array_equal(batch["pixels"], expected)
