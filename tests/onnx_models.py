"""Small ONNX models built with the onnx helpers, so inference tests need no torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from galaxy_infer.model import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, metadata_document
from galaxy_infer.preprocess import Recipe
from galaxy_infer.schema import GZ2, ODD_FEATURES

THRESHOLDS = {f: 0.05 for f in ODD_FEATURES}


def build_tiny_model(path: Path, recipe: Recipe = Recipe(), seed: int = 0, metadata: str | None = None,
                     outputs: int = GZ2.n_answers, fixed_batch: int | None = None) -> Path:
    """Conv -> ReLU -> global pool -> dense: real operators, random weights, proper metadata."""
    rng = np.random.default_rng(seed)
    c = recipe.channels
    w_conv = rng.normal(0, 0.5, (8, c, 3, 3)).astype(np.float32)
    b_conv = np.zeros(8, np.float32)
    w_fc = rng.normal(0, 1.0, (8, outputs)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, outputs).astype(np.float32)
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w_conv", "b_conv"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], [OUTPUT_NAME]),
    ]
    batch = fixed_batch if fixed_batch else "batch"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, c, recipe.input_size, recipe.input_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, outputs])],
        [numpy_helper.from_array(a, n) for a, n in
         [(w_conv, "w_conv"), (b_conv, "b_conv"), (w_fc, "w_fc"), (b_fc, "b_fc")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    doc = metadata if metadata is not None else metadata_document(
        "tiny-test", "0.0.1", recipe, THRESHOLDS, metrics={"note": "random weights, for tests only"})
    if doc:
        model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=doc))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_log_model(path: Path, recipe: Recipe = Recipe()) -> Path:
    """Logits from the log of each channel's mean: an all-black cutout gives -inf and NaN, others finite."""
    rng = np.random.default_rng(1)
    w_fc = rng.normal(0, 1.0, (recipe.channels, GZ2.n_answers)).astype(np.float32)
    b_fc = np.zeros(GZ2.n_answers, np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Log", ["flat"], ["log"]),
        helper.make_node("Gemm", ["log", "w_fc", "b_fc"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "log",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["batch", recipe.channels, recipe.input_size, recipe.input_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", GZ2.n_answers])],
        [numpy_helper.from_array(w_fc, "w_fc"), numpy_helper.from_array(b_fc, "b_fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=metadata_document(
        "log-test", "0.0.1", recipe, THRESHOLDS, metrics={"note": "NaN on black inputs, for tests only"})))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
