"""A converted Zoobot model's catalog fractions against Zoobot's own predictions on real cutouts.

A ``FinetuneableZoobotTree`` (GZ DESI tree, seeded random weights; Zoobot 2.9 builds it offline)
is saved as Zoobot saves it, converted with ``import-zoobot`` and run through the pipeline's own
read/preprocess, predict and postprocess steps, once with the recipe as converted
(``resampling="zoobot"``) and once with the single crop-resize that converted models used before;
Zoobot's ``predict_on_catalog.predict`` with galaxy-datasets' minimal view on the same files is the
reference. Prints, per cutout set and resampling, the per-answer Pearson correlation across
galaxies (median, worst), the mean |diff| over the between-galaxy spread (std; median, worst) and
the read and preprocessing time per cutout (one pass, so only indicative on a busy machine).
``python -m benchmarks.zoobot_parity [--per-set 24] [--encoder convnext_nano]`` (needs the zoobot
extra and ../shared/data).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from galaxy_infer.model import Predictor
from galaxy_infer.catalog import STAGE_TIMING_KEY
from galaxy_infer.pipeline import predict_and_postprocess, read_and_preprocess
from training.cli import main as training_main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("gz1_sdss", "gz2_votes", "gzdecals_rings")


def save_lightning(module, path: Path) -> Path:
    """What Zoobot's ModelCheckpoint callback writes: ``Trainer.save_checkpoint`` of the LightningModule."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def random_desi_tree(encoder: str, seed: int = 0):
    """A FinetuneableZoobotTree on the GZ DESI tree with seeded random weights (no download)."""
    import timm
    import torch
    from zoobot.pytorch.training.finetune import FinetuneableZoobotTree
    from zoobot.shared import schemas

    torch.manual_seed(seed)
    return FinetuneableZoobotTree(schema=schemas.desi_schema, encoder=timm.create_model(encoder, num_classes=0))


def zoobot_fractions(module, files: list[Path], workdir: Path) -> dict[str, np.ndarray]:
    """Zoobot's own ``predict_on_catalog`` with the minimal view, as catalog columns (concentration
    over its question's sum, in the order of ``files``)."""
    import pandas as pd
    from galaxy_datasets.transforms import get_galaxy_transform, minimal_view_config
    from zoobot.pytorch.predictions.predict_on_catalog import predict

    schema = module.schema
    catalog = pd.DataFrame({"file_loc": [str(f) for f in files], "id_str": [str(i) for i in range(len(files))]})
    concentrations = predict(catalog, module, str(workdir / "zoobot.csv"), schema.label_cols,
                             get_galaxy_transform(minimal_view_config()),
                             datamodule_kwargs={"batch_size": 8, "num_workers": 0},
                             trainer_kwargs={"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                                             "enable_model_summary": False})
    fractions = {}
    for question in schema.questions:
        block = concentrations[[answer.text for answer in question.answers]].to_numpy(np.float64)
        for i, answer in enumerate(question.answers):
            fractions[answer.text.replace("-", "_") + "_fraction"] = block[:, i] / block.sum(axis=1)
    return fractions


def pipeline_fractions(model: Path, files: list[Path], resampling: str | None = None
                       ) -> tuple[dict[str, np.ndarray], float]:
    """The catalog's fraction columns as a classify task computes them, optionally with another
    resampling, and the seconds its read and preprocess stage took."""
    predictor = Predictor(model, batch_size=8, num_threads=2)
    recipe = predictor.info.recipe if resampling is None else replace(predictor.info.recipe, resampling=resampling)
    paths = np.array([str(f) for f in files], dtype=object)
    batch = {"object_id": paths, "source_path": paths, "ra": np.full(len(files), np.nan),
             "dec": np.full(len(files), np.nan)}
    table = predict_and_postprocess(read_and_preprocess(batch, recipe), predictor, "zoobot-parity")
    seconds = json.loads(table.schema.metadata[STAGE_TIMING_KEY])["read_preprocess"]
    return {c: table.column(c).to_numpy() for c in table.column_names if c.endswith("_fraction")}, seconds


def answer_agreement(ours: dict[str, np.ndarray], zoobots: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per answer across galaxies: Pearson correlation, and mean |diff| over the between-galaxy spread (std)."""
    corr = np.array([np.corrcoef(ours[c], zoobots[c])[0, 1] for c in zoobots])
    ratio = np.array([np.abs(ours[c] - zoobots[c]).mean() / zoobots[c].std() for c in zoobots])
    return {"corr": corr, "diff_over_spread": ratio}


def figures(agreement: dict[str, np.ndarray]) -> str:
    corr, ratio = agreement["corr"], agreement["diff_over_spread"]
    return (f"correlation median {np.median(corr):.6f} worst {corr.min():.6f}; "
            f"mean|diff|/spread median {np.median(ratio):.2e} worst {ratio.max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-set", type=int, default=24, help="cutouts from each set (default 24)")
    parser.add_argument("--encoder", default="convnext_nano", help="timm encoder (default convnext_nano)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's advice on dataloader workers and unused GPUs
    logging.disable(logging.WARNING)
    sets = {name: sorted((DATA / name / "images").glob("*.jpg"))[: args.per_set] for name in SETS}
    sets["mixed"] = [f for name in SETS for f in sets[name][: max(1, args.per_set // len(SETS))]]
    module = random_desi_tree(args.encoder)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "zoobot.onnx"
        training_main(["import-zoobot", str(save_lightning(module, work / "zoobot.ckpt")), "--output", str(model),
                       "--encoder", args.encoder, "--check-images", *map(str, sets["mixed"][:4])])
        for name, files in sets.items():
            zoobots = zoobot_fractions(module, files, work)
            for resampling in ("crop-resize", "zoobot"):
                ours, seconds = pipeline_fractions(model, files, resampling)
                agreement = figures(answer_agreement(ours, zoobots))
                print(f"{name:15s} {len(files):3d} cutouts  {resampling:11s}  {agreement}; "
                      f"read+preprocess {seconds / len(files) * 1e3:.1f} ms per cutout")


if __name__ == "__main__":
    main()
