"""``import-zoobot``: a Zoobot Lightning checkpoint -> a galaxy-infer ONNX model with its tree and recipe.

Reads ``ZoobotTree`` and ``FinetuneableZoobotTree`` checkpoints without zoobot and without
unrestricted unpickling: ``torch.load(weights_only=True)`` with an allowlist that maps zoobot's
pickled ``Schema``/``Question``/``Answer`` to inert records (their attributes only, no code runs).
The encoder is rebuilt with timm (its name from the checkpoint, or ``encoder``), the Dirichlet head
(dropout, linear, ``1 + 100 * sigmoid``) by hand, the weights loaded strictly, and the model
exported in eval mode (no test-time dropout) with the legacy TorchScript exporter (it handles
maxvit, where the dynamo exporter fails) and a dynamic batch axis. The recipe is Zoobot's
prediction-time view (``resampling="zoobot"``: a 1.2x zoom at full resolution, an antialiased
resize to 224 pixels and a centre crop, [0, 1] scaling, no mean/std normalisation). The check
runs the network on the images given twice: on galaxy-infer's inputs against ONNX, and, where
galaxy-datasets is installed, on Zoobot's own inputs (its loader and minimal view) against
galaxy-infer's preprocessing and ONNX, so a recipe that strays from Zoobot's view is caught.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from galaxy_infer.model import INPUT_NAME, METADATA_KEY, Predictor, metadata_document
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import Recipe
from galaxy_infer.worklist import discover
from galaxy_infer.schema import Flag, Schema
from galaxy_infer.trees import from_zoobot, match_builtin
from training.data import load_input
from training.export import OPSET, save_with_metadata, versions

OUTPUT = "concentrations"
ZOOBOT_INPUT_SIZE = 224
ZOOBOT_CROP_FRACTION = 1 / 1.2
"""Zoobot predicts through a 1.2x zoom about the centre (galaxy-datasets' minimal view)."""
ZOOBOT_RUNTIME = {"batch_size": 32, "task_rows": 128}
"""A 224-pixel ConvNeXt costs ~100x the bundled model per image: small tasks keep workers balanced
and their memory bounded (128 inputs are 77 MB)."""
HUB_PREFIX = "zoobot-encoder-"
PICKLED_ZOOBOT_CLASSES = ("zoobot.shared.schemas.Schema", "zoobot.shared.schemas.Question",
                          "zoobot.shared.schemas.Answer")


class PickledRecord:
    """Stand-in for a pickled zoobot object: keeps its attributes, has no behaviour."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with torch's weights-only unpickler plus zoobot's tree classes as inert records."""
    stand_ins = [(type(name.rsplit(".", 1)[1], (PickledRecord,), {}), name) for name in PICKLED_ZOOBOT_CLASSES]
    with torch.serialization.safe_globals(stand_ins):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict/hyper_parameters)")
    return checkpoint


def checkpoint_tree(hparams: dict[str, Any]) -> Schema:
    """The checkpoint's decision tree, as the built-in tree it matches (campaign suffixes such as
    ``-dr8`` dropped) or else as a tree of its own."""
    if "schema" in hparams:
        pairs, dependencies = hparams["schema"].question_answer_pairs, hparams["schema"].dependencies
    elif hparams.get("question_answer_pairs"):
        pairs, dependencies = hparams["question_answer_pairs"], hparams["dependencies"]
    else:
        raise ValueError("the checkpoint holds no decision tree (question_answer_pairs/schema)")
    pairs = {q: [a.removeprefix("_") for a in answers] for q, answers in pairs.items()}
    suffixes = {"-" + q.rsplit("-", 1)[1] for q in pairs if "-" in q}
    for suffix in ([suffixes.pop()] if len(suffixes) == 1 else []) + [""]:
        if suffix and not all(q.endswith(suffix) for q in pairs):
            continue
        plain = {q.removesuffix(suffix): a for q, a in pairs.items()}
        deps = {q.removesuffix(suffix): (d.replace(suffix + "_", "_", 1) if d else None) for q, d in dependencies.items()}
        builtin = match_builtin(from_zoobot("zoobot", plain, deps))
        if builtin is not None:
            return builtin
    return from_zoobot("zoobot-custom", pairs, dependencies,
                       description="decision tree embedded from a Zoobot checkpoint")


def encoder_name(hparams: dict[str, Any], override: str | None) -> str:
    """The timm architecture: the option, else ``architecture_name`` (ZoobotTree), else the hub name."""
    if override:
        return override
    if hparams.get("architecture_name"):
        return "efficientnet_b0" if hparams["architecture_name"] == "efficientnet" else hparams["architecture_name"]
    name = hparams.get("name") or ""
    if name:
        return name.rsplit("/", 1)[-1].removeprefix(HUB_PREFIX)
    raise ValueError("the checkpoint does not name its encoder (it was given in memory): pass --encoder, "
                     "e.g. convnext_nano, efficientnet_b0, maxvit_tiny_rw_224")


class ScaledSigmoid(nn.Module):
    """Zoobot's Dirichlet activation: concentrations in (1, 101)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * 100.0 + 1.0


class ZoobotNet(nn.Module):
    """Encoder + Dirichlet head with Zoobot's module names, so its state dict loads as saved."""

    def __init__(self, encoder: nn.Module, encoder_dim: int, n_answers: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Sequential(nn.Linear(encoder_dim, n_answers), ScaledSigmoid()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class Imported:
    model: ZoobotNet
    tree: Schema
    recipe: Recipe
    encoder: str
    source: dict[str, Any]


def build_model(checkpoint: dict[str, Any], encoder: str | None = None, greyscale: bool | None = None) -> Imported:
    """The checkpoint's network with its weights, in eval mode, with its tree and Zoobot's recipe."""
    import timm

    hparams = checkpoint["hyper_parameters"]
    tree = checkpoint_tree(hparams)
    arch = encoder_name(hparams, encoder)
    timm_kwargs = dict(hparams.get("timm_kwargs") or {})
    channels = int(timm_kwargs.pop("in_chans", 1 if hparams.get("greyscale") else hparams.get("channels", 3)))
    if greyscale is not None:
        channels = 1 if greyscale else 3
    state = {k.replace("encoder._orig_mod.", "encoder.", 1): v for k, v in checkpoint["state_dict"].items()
             if k.startswith(("encoder.", "head."))}
    weight = state.get("head.1.0.weight")
    if weight is None:
        raise ValueError("no Dirichlet head (head.1.0.weight) in the checkpoint: is it a ZoobotTree or "
                         "FinetuneableZoobotTree?")
    if weight.shape[0] != tree.n_answers:
        raise ValueError(f"the head predicts {weight.shape[0]} answers, the tree has {tree.n_answers}")
    net = timm.create_model(arch, num_classes=0, in_chans=channels, pretrained=False, **timm_kwargs)
    model = ZoobotNet(net, int(weight.shape[1]), tree.n_answers)
    model.load_state_dict(state, strict=True)
    recipe = Recipe(input_size=ZOOBOT_INPUT_SIZE, channels=channels, crop_fraction=ZOOBOT_CROP_FRACTION,
                    greyscale=channels == 1, resampling="zoobot")
    kind = "FinetuneableZoobotTree" if "schema" in hparams else "ZoobotTree"
    return Imported(model.eval(), tree, recipe, arch, {"class": kind, "encoder": arch, "channels": channels})


def export(imported: Imported, path: Path, name: str, version: str, thresholds: dict[str, float],
           **extra: Any) -> Path:
    """Write the ONNX model (legacy exporter, dynamic batch) with the tree, recipe, flags and runtime preference."""
    recipe = imported.recipe
    dummy = torch.zeros(2, recipe.channels, recipe.input_size, recipe.input_size)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(imported.model, (dummy,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    tree = imported.tree
    unknown = set(thresholds) - {f.name for f in tree.flags}
    if unknown:
        raise ValueError(f"no flags {sorted(unknown)} in tree {tree.name}; it has {[f.name for f in tree.flags]}")
    flags = tuple(Flag(f.name, f.answers, f.column, thresholds.get(f.name, f.threshold)) for f in tree.flags)
    doc = metadata_document(name, version, recipe, {}, tree, flags=flags, output_kind="dirichlet",
                            runtime=ZOOBOT_RUNTIME, versions=versions(), **extra)
    return save_with_metadata(onnx.load_from_string(buffer.getvalue()), path, doc)


def _fraction_diff(a: np.ndarray, b: np.ndarray, tree: Schema) -> float:
    fa, fb = postprocess(a, {}, tree, (), "dirichlet"), postprocess(b, {}, tree, (), "dirichlet")
    return max(float(np.abs(fa[c] - fb[c]).max()) for c in tree.answer_columns)


def parity(imported: Imported, path: Path, images: np.ndarray,
           zoobot: tuple[list[int], np.ndarray] | str) -> dict[str, Any]:
    """Largest differences between PyTorch and onnxruntime on ``images`` (concentrations and catalog
    fractions) and, under ``zoobot_view``, between the network on Zoobot's own inputs for the images
    at the given indices and ONNX on galaxy-infer's (inputs and fractions), or why that was not compared.

    The network is the checkpoint's weights in :class:`ZoobotNet` (Zoobot's module names, loaded
    strictly), not Zoobot's LightningModule: building that would need unrestricted unpickling."""
    with torch.no_grad():
        expected = imported.model(torch.from_numpy(images)).numpy()
    got = Predictor(path, batch_size=min(len(images), 8), num_threads=1).predict(images)
    result: dict[str, Any] = {"images": int(len(images)),
                              "max_abs_concentration_diff": float(np.abs(expected - got).max()),
                              "max_abs_fraction_diff": _fraction_diff(expected, got, imported.tree)}
    if isinstance(zoobot, str):
        result["zoobot_view"] = zoobot
        return result
    indices, inputs = zoobot
    with torch.no_grad():
        theirs = imported.model(torch.from_numpy(inputs)).numpy()
    result["zoobot_view"] = {"images": len(indices),
                             "max_abs_input_diff": float(np.abs(inputs - images[indices]).max()),
                             "max_abs_fraction_diff": _fraction_diff(theirs, got[indices], imported.tree)}
    return result


PARITY_TOLERANCE = 1e-4
"""Largest accepted difference in a catalog fraction between PyTorch and ONNX, and between Zoobot's
view through PyTorch and galaxy-infer's through ONNX."""


def check_inputs(paths: list[str], recipe: Recipe, limit: int) -> tuple[np.ndarray, str, list[str]]:
    """Preprocessed real cutouts (the inference path) and their paths, or a seeded random batch when none are given."""
    files = [r["source_path"] for r in discover(paths)][:limit] if paths else []
    if files:
        return np.stack([load_input(f, recipe) for f in files]), f"{len(files)} cutouts", files
    rng = np.random.default_rng(0)
    shape = (4, recipe.channels, recipe.input_size, recipe.input_size)
    return rng.random(shape, dtype=np.float32), "random images", []


def zoobot_inputs(files: list[str], recipe: Recipe) -> tuple[list[int], np.ndarray] | str:
    """Zoobot's own inputs for the check cutouts it can read, with their indices in ``files``: its
    loader and ``get_galaxy_transform(minimal_view_config())`` (greyscale for one-channel models), as
    ``predict_on_catalog.predict`` applies them; or why there are none."""
    if not files:
        return "not compared: checked on random images"
    try:
        from galaxy_datasets.pytorch.galaxy_dataset import load_img_file
        from galaxy_datasets.transforms import get_galaxy_transform, minimal_view_config
    except ImportError:
        return "not compared: galaxy-datasets (installed with zoobot) is not importable"
    config = minimal_view_config()
    config.greyscale = recipe.channels == 1
    transform = get_galaxy_transform(config)
    shape = (recipe.channels, recipe.input_size, recipe.input_size)
    pairs = []
    for i, f in enumerate(files):
        if f.lower().endswith((".jpg", ".jpeg", ".png")) and "://" not in f:
            view = transform(load_img_file(f)).numpy()
            if view.shape == shape:  # Zoobot would not take a grey cutout into a colour model at all
                pairs.append((i, view))
    if not pairs:
        return "not compared: no local JPEG/PNG check cutout in the model's channels"
    return [i for i, _ in pairs], np.stack([v for _, v in pairs])


def import_zoobot(checkpoint_path: str | Path, output: str | Path, name: str | None = None, version: str = "1.0.0",
                  encoder: str | None = None, greyscale: bool | None = None,
                  thresholds: dict[str, float] | None = None, check_images: list[str] | None = None,
                  check_limit: int = 16) -> dict[str, Any]:
    """Convert, export and check; returns what it did (the parity figures included). Raises
    ``ValueError`` when PyTorch and ONNX, or Zoobot's view and galaxy-infer's, disagree by more
    than :data:`PARITY_TOLERANCE` in a catalog fraction."""
    checkpoint_path, output = Path(checkpoint_path), Path(output)
    imported = build_model(load_checkpoint(checkpoint_path), encoder, greyscale)
    sha = hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()
    images, what, files = check_inputs(check_images or [], imported.recipe, check_limit)
    name = name or f"zoobot-{imported.tree.name}-{imported.encoder}"
    source = {**imported.source, "checkpoint": checkpoint_path.name, "checkpoint_sha256": sha}
    export(imported, output, name, version, thresholds or {}, source=source)
    result = parity(imported, output, images, zoobot_inputs(files, imported.recipe))
    result["checked_on"] = what
    if result["max_abs_fraction_diff"] > PARITY_TOLERANCE:
        output.unlink()
        raise ValueError(f"ONNX and PyTorch disagree: {json.dumps(result)}")
    view = result["zoobot_view"]
    if isinstance(view, dict) and view["max_abs_fraction_diff"] > PARITY_TOLERANCE:
        output.unlink()
        raise ValueError(f"galaxy-infer's preprocessing does not reproduce this galaxy-datasets' view of the "
                         f"check cutouts, so catalogs would differ from Zoobot's: {json.dumps(result)}")
    proto = onnx.load(str(output))
    doc = json.loads(next(m.value for m in proto.metadata_props if m.key == METADATA_KEY))
    save_with_metadata(proto, output, json.dumps({**doc, "parity": result}, sort_keys=True))
    return {"output": str(output), "name": name, "tree": imported.tree.name, "encoder": imported.encoder,
            "channels": imported.recipe.channels, "bytes": output.stat().st_size, "parity": result}
