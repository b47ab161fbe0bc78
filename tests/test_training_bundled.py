"""The bundled default model: loads without torch, describes itself, and classifies real cutouts."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from galaxy_infer.model import Predictor, bundled_model_path, load_model_info
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import preprocess
from galaxy_infer.readers import read_cutout
from galaxy_infer.schema import ODD_FEATURES
from training.quantize import WEIGHT_RANGE

pytestmark = pytest.mark.skipif(not bundled_model_path().exists(), reason="no bundled model")


def _catalog_columns(folder, files) -> dict[str, np.ndarray]:
    """The bundled model's catalog columns for the cutouts ``folder / f``, through the inference path."""
    predictor = Predictor(bundled_model_path(), batch_size=64, num_threads=1)
    recipe = predictor.info.recipe
    x = np.stack([preprocess(read_cutout(str(folder / f), recipe).pixels, recipe) for f in files])
    return postprocess(predictor.predict(x), predictor.info.thresholds)


def test_bundled_model_is_small_and_describes_itself():
    assert bundled_model_path().stat().st_size < 5_000_000
    info = load_model_info(bundled_model_path())
    assert set(info.thresholds) == set(ODD_FEATURES)
    assert {"metrics", "training_data", "versions", "architecture", "threshold_choice"} <= set(info.extra)
    floors = info.extra["metrics"]["floors_on_test"]
    assert set(floors) == {"gz1_sdss.three_way_accuracy", "gz1_sdss.merger_auc", "gz_kaggle_spiral.spiral_auc",
                           "gzdecals_rings.ring_auc", "gz2_votes.rmse_ratio"}


@pytest.mark.shared_data
def test_bundled_model_tells_ellipticals_from_edge_on_disks(shared_data):
    import pandas as pd

    labels = pd.read_csv(shared_data / "gz1_sdss" / "labels.csv")
    picks = pd.concat([labels[labels.class_name == c].head(20) for c in ("elliptical", "edge_on")])
    c = _catalog_columns(shared_data / "gz1_sdss", picks.file)
    edge = c["smooth_or_featured_featured_or_disk_fraction"] * c["disk_edge_on_yes_fraction"]
    is_edge = (picks.class_name == "edge_on").to_numpy()
    assert edge[is_edge].mean() > edge[~is_edge].mean() + 0.3


@pytest.mark.shared_data
def test_bundled_model_does_not_call_every_sdss_galaxy_odd(shared_data):
    """GZ2 volunteers call about one elliptical in six odd; 1.1.0 said 0.99 for all of them and
    flagged 59% of GZ1 galaxies as rings. The flags should fire at rates a survey could have."""
    import pandas as pd

    labels = pd.read_csv(shared_data / "gz1_sdss" / "labels.csv").sample(200, random_state=0)
    c = _catalog_columns(shared_data / "gz1_sdss", labels.file)
    elliptical = (labels.class_name == "elliptical").to_numpy()
    assert c["odd_yes_fraction"][elliptical].mean() < 0.3
    for feature in ODD_FEATURES:
        assert c[f"odd_{feature}_flag"].mean() < 0.1, feature


@pytest.mark.shared_data
@pytest.mark.xfail(strict=True, reason="known limit of gz2-compact-1.2.0 (MODEL_CARD.md): every DECaLS-rendered "
                   "cutout gets P(odd = yes) 0.999 and the merger flag; the 1.3.0 candidate did not fix it either")
def test_bundled_model_does_not_call_every_decals_disk_odd(shared_data):
    """The ring set's non-rings are ordinary featured disks: rings should be odder than the disks
    around them, and most disks should not be flagged as mergers."""
    import pandas as pd

    labels = pd.read_csv(shared_data / "gzdecals_rings" / "labels.csv")
    picks = pd.concat([labels[labels.ring == r].sample(60, random_state=0) for r in (0, 1)])
    c = _catalog_columns(shared_data / "gzdecals_rings", picks.file)
    ring = (picks.ring == 1).to_numpy()
    assert c["odd_yes_fraction"][~ring].mean() < 0.8
    assert c["odd_yes_fraction"][ring].mean() > c["odd_yes_fraction"][~ring].mean() + 0.1
    assert c["odd_merger_flag"][~ring].mean() < 0.5


def test_bundled_int8_model_is_the_quantized_default_and_scores_like_it():
    fp32, int8 = load_model_info(bundled_model_path()), load_model_info(bundled_model_path("int8"))
    assert bundled_model_path("int8").stat().st_size < bundled_model_path().stat().st_size
    assert int8.name == f"{fp32.name}-int8" and int8.version == fp32.version and int8.recipe == fp32.recipe
    assert int8.extra["precision"] == "int8" and int8.thresholds == fp32.thresholds
    # rebuilt whenever the float model changes: `python -m training quantize --config training/configs/default.toml`
    assert int8.extra["quantization"]["quantized_from"] == {"model_id": fp32.model_id, "sha256": fp32.sha256}
    for key, floor in fp32.extra["metrics"]["floors_on_test"].items():
        quantized = int8.extra["metrics"]["floors_on_test"][key]
        assert abs(quantized["value"] - floor["value"]) < 0.02
        # within that tolerance of its floor a figure may land on either side (1.1.0's ring AUC was 0.798 float, 0.802 int8)
        on_the_floor = abs(floor["value"] - float(floor["floor"].split()[1])) < 0.02
        assert on_the_floor or quantized["pass"] == floor["pass"]


def test_bundled_int8_weights_leave_no_kernel_room_to_saturate():
    """7-bit weights: a pair of uint8 x int8 products stays within 16 bits, so AVX2-only CPUs sum
    exactly like VNNI ones and the int8 copy gives the same numbers on every x86 node (issue 26)."""
    model = onnx.load(str(bundled_model_path("int8")))
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8 = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name in weights and i.data_type == onnx.TensorProto.INT8]
    low, high = WEIGHT_RANGE
    assert int8 and all(w.min() >= low and w.max() <= high for w in int8)
    assert 2 * 255 * max(-low, high) <= np.iinfo(np.int16).max


@pytest.mark.shared_data
def test_bundled_int8_model_agrees_with_the_float_model_on_real_cutouts(shared_data):
    """Measured on a VNNI CPU (mean 0.0048, max 0.058); the weight-range test above makes the same hold
    without VNNI. The bounds fail a bad copy: full-range weights gave a max of 0.29 on AVX2-only CPUs."""
    files = sorted((shared_data / "gz1_sdss" / "images").glob("*.jpg"))[:32] + \
        sorted((shared_data / "gzdecals_rings" / "images").glob("*.jpg"))[:16]
    fp32 = Predictor(bundled_model_path(), batch_size=64, num_threads=1)
    int8 = Predictor(bundled_model_path("int8"), batch_size=64, num_threads=1)
    recipe = fp32.info.recipe
    x = np.stack([preprocess(read_cutout(str(f), recipe).pixels, recipe) for f in files])
    a, b = postprocess(fp32.predict(x), fp32.info.thresholds), postprocess(int8.predict(x), int8.info.thresholds)
    diff = np.stack([np.abs(a[k] - b[k]) for k in a if k.endswith(("_fraction", "_prob"))])
    assert diff.mean() < 0.01 and diff.max() < 0.1
