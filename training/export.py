"""ONNX export with the metadata the inference side reads (``galaxy_infer.model``)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

import galaxy_infer
from galaxy_infer.model import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, metadata_document
from galaxy_infer.preprocess import Recipe

OPSET = 17


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "galaxy_infer": getattr(galaxy_infer, "__version__", "0.1.0")}


def export_onnx(model: nn.Module, path: Path, recipe: Recipe, name: str, version: str,
                thresholds: dict[str, float], **extra: Any) -> Path:
    """Export ``model`` (eval mode, BatchNorm folded) with a dynamic batch axis and metadata."""
    model = model.eval().cpu()
    dummy = torch.zeros(2, recipe.channels, recipe.input_size, recipe.input_size)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    doc = metadata_document(name, version, recipe, thresholds, versions=versions(), **extra)
    del proto.metadata_props[:]
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=doc))
    proto.producer_name = "galaxy-infer training"
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path
