"""Zoobot checkpoints (random weights, saved as Zoobot saves them) -> ONNX -> a catalog on real cutouts."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zoobot")
pytestmark = pytest.mark.torch

import torch  # noqa: E402

from benchmarks.zoobot_parity import (answer_agreement, figures, random_desi_tree, save_lightning,  # noqa: E402
                                      zoobot_fractions)
from galaxy_infer.catalog import Layout, prediction_fields, read_catalog  # noqa: E402
from galaxy_infer.cli import main as galaxy_infer_main  # noqa: E402
from galaxy_infer.model import load_model_info  # noqa: E402
from galaxy_infer.pipeline import RunConfig, classify  # noqa: E402
from galaxy_infer.trees import GZ_DESI, GZ_EUCLID  # noqa: E402
from training.cli import main as training_main  # noqa: E402
from training.data import load_input  # noqa: E402
from training.zoobot_import import load_checkpoint  # noqa: E402

ENCODER = "test_convnext"
"""timm's smallest ConvNeXt (for tests): the same code path as convnext_nano at a fraction of the cost."""


@pytest.fixture(scope="module")
def zoobot_tree_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    from zoobot.pytorch.estimators.define_model import ZoobotTree
    from zoobot.shared import schemas

    torch.manual_seed(0)
    schema = schemas.desi_schema
    model = ZoobotTree(output_dim=len(schema.label_cols), question_answer_pairs=schema.question_answer_pairs,
                       dependencies=schema.dependencies, architecture_name=ENCODER)
    return save_lightning(model, tmp_path_factory.mktemp("zoobot") / "desi.ckpt"), model.eval()


@pytest.fixture(scope="module")
def converted(zoobot_tree_checkpoint, shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "desi.onnx"
    assert training_main(["import-zoobot", str(zoobot_tree_checkpoint[0]), "--output", str(out),
                          "--flag-threshold", "merger=0.3", "--check-images",
                          str(shared_data / "gz1_sdss" / "images"), "--check-limit", "4"]) == 0
    return out


def cutouts(shared_data: Path, n: int = 6) -> list[Path]:
    return sorted((shared_data / "gz1_sdss" / "images").glob("*.jpg"))[:n]


@pytest.mark.ray
@pytest.mark.shared_data
def test_round_trip_catalog_has_the_desi_columns_and_pytorchs_fractions(converted, zoobot_tree_checkpoint,
                                                                         shared_data, local_ray, tmp_path):
    files = cutouts(shared_data)
    summary = classify(RunConfig(inputs=[str(f) for f in files], out=str(tmp_path / "cat"), model=str(converted),
                                 device="cpu", progress=False))
    assert summary["ok"] == len(files)
    table = read_catalog(tmp_path / "cat").sort_by("object_id")
    info = load_model_info(converted)
    expected = [f.name for f in prediction_fields(Layout(GZ_DESI, info.flags))]
    assert [c for c in table.column_names if c.endswith(("_fraction", "_asked", "_prob", "_flag"))] == expected
    assert {"merging_merger_fraction", "merger_prob", "merger_flag", "major_disturbance_flag"} <= set(expected)
    metadata = table.schema.metadata
    assert json.loads(metadata[b"galaxy_infer.tree"]) == "gz_desi"
    assert metadata[b"galaxy_infer.output_kind"] == b"dirichlet"
    # PyTorch through Zoobot's own module, on the same preprocessed inputs
    x = torch.from_numpy(np.stack([load_input(str(f), info.recipe) for f in sorted(files, key=lambda p: p.stem)]))
    with torch.no_grad():
        concentrations = zoobot_tree_checkpoint[1](x).numpy()
    for q in GZ_DESI.questions:
        s = GZ_DESI.slices[q.name]
        want = concentrations[:, s] / concentrations[:, s].sum(axis=1, keepdims=True)
        for i, a in enumerate(q.answer_names):
            got = table.column(f"{q.name}_{a}_fraction").to_numpy()
            np.testing.assert_allclose(got, want[:, i], atol=2e-6)
    merger = table.column("merger_prob").to_numpy()
    np.testing.assert_array_equal(table.column("merger_flag").to_numpy(zero_copy_only=False), merger >= 0.3)


def test_converted_model_describes_its_tree_recipe_and_flags(converted, capsys):
    assert galaxy_infer_main(["info", str(converted), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tree"]["name"] == "gz_desi" and (info["tree"]["questions"], info["tree"]["answers"]) == (10, 34)
    assert info["recipe"]["input_size"] == 224 and info["recipe"]["crop_fraction"] == pytest.approx(1 / 1.2)
    assert info["recipe"]["resampling"] == "zoobot"
    assert info["output_kind"] == "dirichlet" and info["runtime"]["batch_size"] > 0
    assert {f["name"]: f["threshold"] for f in info["flags"]} == {"merger": 0.3, "major_disturbance": 0.5}
    assert info["parity"]["max_abs_fraction_diff"] < 1e-4 and info["parity"]["checked_on"] == "4 cutouts"
    assert info["parity"]["zoobot_view"]["images"] == 4 and info["parity"]["zoobot_view"]["max_abs_input_diff"] == 0
    assert info["source"]["class"] == "ZoobotTree" and info["source"]["encoder"] == ENCODER


@pytest.mark.shared_data
def test_finetuned_greyscale_euclid_checkpoint_converts(tmp_path, shared_data):
    import timm
    from zoobot.pytorch.training.finetune import FinetuneableZoobotTree
    from zoobot.shared import schemas

    encoder = timm.create_model(ENCODER, num_classes=0, in_chans=1)
    ckpt = save_lightning(FinetuneableZoobotTree(schema=schemas.euclid_schema, encoder=encoder), tmp_path / "e.ckpt")
    with pytest.raises(ValueError, match="--encoder"):
        training_main(["import-zoobot", str(ckpt), "--output", str(tmp_path / "x.onnx")])
    out = tmp_path / "euclid.onnx"
    assert training_main(["import-zoobot", str(ckpt), "--output", str(out), "--encoder", ENCODER,
                          "--channels", "greyscale", "--check-images", str(cutouts(shared_data, 2)[0])]) == 0
    info = load_model_info(out)
    assert info.tree == GZ_EUCLID and info.tree.n_answers == 46
    assert info.recipe.channels == 1 and info.recipe.greyscale and info.recipe.resampling == "zoobot"
    assert info.extra["parity"]["zoobot_view"]["max_abs_input_diff"] == 0  # Zoobot's Grayscale, then its view
    assert {"problem", "artifact", "merger"} <= {f.name for f in info.flags}
    assert info.extra["source"]["class"] == "FinetuneableZoobotTree"


@pytest.mark.shared_data
def test_zoobot_recipe_is_bit_identical_to_galaxy_datasets_minimal_view(shared_data):
    """Colour and greyscale, odd, even and non-square cutouts: the Pillow steps are torchvision's own."""
    from galaxy_datasets.transforms import get_galaxy_transform, minimal_view_config
    from PIL import Image

    from galaxy_infer.preprocess import Recipe, preprocess
    from galaxy_infer.readers import read_cutout

    grey_config = minimal_view_config()
    grey_config.greyscale = True
    views = [(get_galaxy_transform(minimal_view_config()), Recipe(224, 3, 1 / 1.2, resampling="zoobot")),
             (get_galaxy_transform(grey_config), Recipe(224, 1, 1 / 1.2, greyscale=True, resampling="zoobot"))]
    files = [f for d in ("gz1_sdss", "gz2_votes", "gzdecals_rings")
             for f in sorted((shared_data / d / "images").glob("*.jpg"))[:3]]
    for transform, recipe in views:
        for f in files:
            image = Image.open(f)
            np.testing.assert_array_equal(preprocess(read_cutout(str(f), recipe).image, recipe),
                                          transform(image).numpy())
            wide = image.crop((0, 40, image.width, image.height - 40))
            np.testing.assert_array_equal(preprocess(np.asarray(wide), recipe), transform(wide).numpy())


@pytest.mark.ray
@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (dataloader workers, unused GPU)
def test_catalog_reproduces_zoobots_own_predict_on_catalog(shared_data, local_ray, tmp_path):
    """A FinetuneableZoobotTree (convnext_nano, GZ DESI, seeded random weights) converted and run by
    ``classify`` on 24 real cutouts of three sizes, against Zoobot 2.9's own ``predict_on_catalog``
    with galaxy-datasets' minimal view on the same files. Before the zoobot resampling these
    correlated at 0.991 median, 0.964 worst (``python -m benchmarks.zoobot_parity`` prints both)."""
    module = random_desi_tree("convnext_nano")
    onnx_path = tmp_path / "desi-nano.onnx"
    files = [f for d in ("gz1_sdss", "gz2_votes", "gzdecals_rings")
             for f in sorted((shared_data / d / "images").glob("*.jpg"))[:8]]
    assert training_main(["import-zoobot", str(save_lightning(module, tmp_path / "nano.ckpt")), "--output",
                          str(onnx_path), "--encoder", "convnext_nano", "--check-images", *map(str, files[::6])]) == 0
    summary = classify(RunConfig(inputs=[str(f) for f in files], out=str(tmp_path / "cat"), model=str(onnx_path),
                                 device="cpu", progress=False))
    assert summary["ok"] == len(files)
    table = read_catalog(tmp_path / "cat").to_pandas().set_index("object_id")
    zoobots = zoobot_fractions(module, files, tmp_path)
    assert set(zoobots) == set(GZ_DESI.answer_columns)
    ours = {c: table.loc[[f.stem for f in files], c].to_numpy(np.float64) for c in zoobots}
    agreement = answer_agreement(ours, zoobots)
    print(figures(agreement))
    assert agreement["corr"].min() >= 0.99 and agreement["diff_over_spread"].max() < 0.1, figures(agreement)
    assert max(np.abs(ours[c] - zoobots[c]).max() for c in zoobots) < 1e-4, "more than PyTorch vs ONNX rounding"


class Payload:
    """Any class outside the allowlist: unpickling it could run code."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoints_are_not_unpickled_beyond_the_allowlist(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
