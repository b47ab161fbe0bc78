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
    return save_with_metadata(proto, path, metadata_document(name, version, recipe, thresholds,
                                                             versions=versions(), **extra))


def save_with_metadata(proto: onnx.ModelProto, path: Path, doc: str) -> Path:
    """Replace the model's metadata with ``doc`` (under :data:`METADATA_KEY`), check it and save it."""
    del proto.metadata_props[:]
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=doc))
    proto.producer_name = "galaxy-infer training"
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


def onnx_throughput(path: Path, batch: int = 256, threads: int = 1, repeats: int = 7) -> dict[str, float]:
    """Images per second of an exported model in onnxruntime (CPU, fixed thread count, best of N)."""
    import time

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = [batch] + [int(d) for d in session.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - started)
    best, median = min(times), float(np.median(times))
    return {"batch": batch, "threads": threads, "ms_per_image_best": 1e3 * best / batch,
            "ms_per_image_median": 1e3 * median / batch, "images_per_s_best": batch / best,
            "images_per_s_median": batch / median}
