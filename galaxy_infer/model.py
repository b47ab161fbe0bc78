"""ONNX models that describe themselves, and the onnxruntime session that runs them.

A model file carries one JSON document under the metadata key ``galaxy_infer``: its name and
version, the catalog schema version, its decision tree (a built-in tree's name, or the tree
itself), its output columns and kind (logits or Dirichlet concentrations), the preprocessing
recipe, its flags with their thresholds, what it prefers at run time (batch and task size) and
whatever training recorded (metrics, data, versions). Models exported before trees were data
have no tree and are GZ2. A model whose metadata or tensor shapes do not fit is refused with
:class:`ModelError` before any work starts.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_infer import storage
from galaxy_infer.environment import cache_folder
from galaxy_infer.errors import InputError, ModelError
from galaxy_infer.preprocess import Recipe
from galaxy_infer.postprocess import OUTPUT_KINDS
from galaxy_infer.schema import GZ2, Flag, Schema
from galaxy_infer.trees import resolve_tree, tree_reference

METADATA_KEY = "galaxy_infer"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEVICES = ("auto", "cpu", "cuda")
CUDA_OPTIONS = {"use_tf32": "0"}
"""onnxruntime's CUDA provider multiplies float32 in TF32 by default: the bundled model's logits then
differ from the CPU's by 3.5e-3; in float32 by 6e-6, at the same speed (H200, docs/benchmarks.md)."""


BUNDLED_MODELS = {"default": "default.onnx", "int8": "default-int8.onnx"}
"""Models shipped inside the package, by name: ``default`` is the float32 reference; ``int8`` is
its quantized copy (same test metrics, prediction ~1.7x cheaper on CPU; see the model card)."""


def bundled_model_path(name: str = "default") -> Path:
    return Path(__file__).parent / "models" / BUNDLED_MODELS[name]


def resolve_model(model: str | os.PathLike) -> str:
    """A local path to the model: a bundled model's name becomes its path (unless a file of that name
    exists); an object-store URI is read and kept in :func:`model_cache` (onnxruntime opens files)."""
    model = str(model)
    if storage.is_remote(model):
        return fetch_model(model)
    return str(bundled_model_path(model)) if model in BUNDLED_MODELS and not os.path.exists(model) else model


def model_cache() -> Path:
    """Where fetched models are kept (see :func:`~galaxy_infer.environment.cache_folder`)."""
    return cache_folder("models")


def fetch_model(uri: str) -> str:
    """The model at ``uri`` as a local file named by its SHA-256 (so a changed model is fetched anew)."""
    try:
        data = storage.read_bytes(uri)
    except InputError as exc:
        raise ModelError(f"cannot read the model {uri}: {exc}") from None
    path = model_cache() / f"{hashlib.sha256(data).hexdigest()}.onnx"
    if not path.exists():
        storage.write_object_atomic(str(path), lambda f: f.write(data))
    return str(path)


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself."""

    path: str
    name: str
    version: str
    schema_version: str
    recipe: Recipe
    thresholds: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    tree: Schema = GZ2
    flags: tuple[Flag, ...] = ()
    output_kind: str = "logits"
    runtime: dict[str, int] = field(default_factory=dict)
    """What the model prefers at run time: ``batch_size`` (images per onnxruntime call) and
    ``task_rows`` (cutouts per Ray task); options given by the user win."""

    @property
    def model_id(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def input_shape(self) -> list[int]:
        return [self.recipe.channels, self.recipe.input_size, self.recipe.input_size]

    @cached_property
    def sha256(self) -> str:
        with open(self.path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model_id": self.model_id,
            "name": self.name,
            "version": self.version,
            "schema_version": self.schema_version,
            "input_shape": self.input_shape,
            "recipe": json.loads(self.recipe.to_json()),
            "thresholds": self.thresholds,
            "sha256": self.sha256,
            "output_kind": self.output_kind,
            "tree": describe_tree(self.tree),
            "flags": [f.to_dict() for f in self.flags],
            "runtime": self.runtime,
            **self.extra,
        }


def describe_tree(tree: Schema) -> dict[str, Any]:
    """A tree as ``info`` shows it: each question with its answers, the answer leading to it and its public name."""
    questions = []
    for q in tree.questions:
        d: dict[str, Any] = {"question": q.name, "answers": list(q.answer_names)}
        if q.asked_after:
            d["asked_after"] = "=".join(q.asked_after)
        if q.asked_unless:
            d["asked_unless"] = "=".join(q.asked_unless)
        if q.original:
            d["original"] = q.original
        questions.append(d)
    return {"name": tree.name, "description": tree.description, "questions": len(tree.questions),
            "answers": tree.n_answers, "layout": questions}


def metadata_document(name: str, version: str, recipe: Recipe, thresholds: dict[str, float],
                      schema: Schema = GZ2, flags: tuple[Flag, ...] | None = None, output_kind: str = "logits",
                      runtime: dict[str, int] | None = None, **extra: Any) -> str:
    """The JSON stored under :data:`METADATA_KEY`; training and ``import-zoobot`` call this when exporting.

    ``flags`` default to the tree's own, with ``thresholds`` (by flag name; every one required).
    """
    if flags is None:
        missing = {f.name for f in schema.flags} - set(thresholds)
        if missing:
            raise ValueError(f"thresholds missing for {sorted(missing)}")
        flags = schema.flags_with(thresholds)
    if output_kind not in OUTPUT_KINDS:
        raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}")
    doc = {
        "name": name,
        "version": version,
        "schema_version": schema.version,
        "tree": tree_reference(schema),
        "outputs": list(schema.answer_columns),
        "output_kind": output_kind,
        "recipe": json.loads(recipe.to_json()),
        "thresholds": {f.name: float(f.threshold) for f in flags},
        "flags": [f.to_dict() for f in flags],
        **({"runtime": runtime} if runtime else {}),
        **extra,
    }
    return json.dumps(doc, sort_keys=True)


def parse_metadata(path: str, custom: dict[str, str]) -> ModelInfo:
    """Check a model's metadata (its tree, outputs, flags) and build its :class:`ModelInfo`."""
    if METADATA_KEY not in custom:
        raise ModelError(f"{path} has no '{METADATA_KEY}' metadata; it was not exported by galaxy-infer training")
    try:
        doc = json.loads(custom[METADATA_KEY])
        recipe = Recipe.from_dict(doc["recipe"])
        name, version, schema_version = doc["name"], str(doc["version"]), str(doc["schema_version"])
        thresholds = {k: float(v) for k, v in doc["thresholds"].items()}
        outputs = doc["outputs"]
        kind = doc.get("output_kind", "logits")
        tree = resolve_tree(doc.get("tree"))
        flags = (tuple(Flag.from_dict(f) for f in doc["flags"]) if "flags" in doc
                 else tree.flags_with(thresholds))
        runtime = {k: int(v) for k, v in doc.get("runtime", {}).items()}
        if "flags" in doc:
            thresholds = {f.name: f.threshold for f in flags}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed '{METADATA_KEY}' metadata ({exc})") from None
    if schema_version != tree.version:
        raise ModelError(f"{path} was built for catalog schema {schema_version}; this program writes {tree.version}")
    if list(outputs) != list(tree.answer_columns):
        raise ModelError(f"{path} predicts different answers than its tree {tree.name} of schema {tree.version}")
    if kind not in OUTPUT_KINDS:
        raise ModelError(f"{path} outputs '{kind}'; supported: {', '.join(OUTPUT_KINDS)}")
    missing = {f.name for f in flags} - set(thresholds) if "flags" not in doc else set()
    if missing:
        raise ModelError(f"{path} has no flag thresholds for {sorted(missing)}")
    for f in flags:
        for question, answer in f.answers:
            if question not in {q.name for q in tree.questions} or answer not in tree.question(question).answer_names:
                raise ModelError(f"{path}: flag {f.name} names {question}={answer}, which is not in its tree {tree.name}")
    known = {"name", "version", "schema_version", "outputs", "output_kind", "recipe", "thresholds", "tree",
             "flags", "runtime"}
    return ModelInfo(str(path), name, version, schema_version, recipe, thresholds,
                     {k: v for k, v in doc.items() if k not in known}, tree, flags, kind, runtime)


def load_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read a model's metadata without preparing it for inference."""
    import onnxruntime as ort

    path = str(path)
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelError(f"{path} is not a loadable ONNX model: {exc}") from None
    info = parse_metadata(path, session.get_modelmeta().custom_metadata_map)
    _check_shapes(session, info)
    return info


def _check_shapes(session, info: ModelInfo) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{info.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    shape = list(inputs[0].shape)
    if len(shape) != 4 or [d for d in shape[1:] if isinstance(d, int)] != info.input_shape:
        raise ModelError(f"{info.path}: input shape {shape} does not match the recipe's [N, {', '.join(map(str, info.input_shape))}]")
    out = list(outputs[0].shape)
    if len(out) != 2 or out[1] != info.tree.n_answers:
        raise ModelError(f"{info.path}: output shape {out} is not [N, {info.tree.n_answers}]")


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    return device


def run_device(info: ModelInfo, device: str) -> str:
    """The device a run asks for with this model: ``device``, except that an int8 model runs on CPUs.

    onnxruntime's CUDA provider runs a QDQ model's quantized layers in float: on an H200 the bundled
    int8 model's vote fractions differed from its CPU numbers by 0.04 and it was no faster than the
    float model there (docs/benchmarks.md), so a GPU node would not give the CPU nodes' catalog.
    """
    if check_device(device) == "cpu" or info.extra.get("precision") != "int8":
        return device
    if device == "cuda":
        source = info.extra.get("quantization", {}).get("quantized_from", {}).get("model_id", "the float model")
        raise ModelError(f"{info.model_id} is an int8 model, which runs on CPUs only: on CUDA its vote fractions "
                         f"differ from its CPU numbers by up to 0.04 and it is no faster; use {source} on GPUs")
    return "cpu"


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when this process's onnxruntime offers CUDA and a GPU is visible to
    it (Ray hides GPUs from tasks that reserved none), else ``cpu``."""
    import onnxruntime as ort

    if check_device(device) != "auto":
        return device
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return "cuda" if has_cuda and _gpu_visible() else "cpu"


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


class Predictor:
    """An onnxruntime session that predicts logits in fixed-size batches.

    ``device`` is decided here, where prediction runs: ``cuda`` fails unless onnxruntime really
    runs on CUDA; ``auto`` tries CUDA where it looks usable and keeps the CPU otherwise.
    :attr:`device` is what the session really runs on.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 256,
                 num_threads: int | None = None, model_bytes: bytes | None = None) -> None:
        """``model_bytes``, when given, is the content of ``path`` as read elsewhere (a cluster
        driver ships it to workers that cannot see the driver's files)."""
        import onnxruntime as ort

        wanted = resolve_device(device)
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = num_threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if wanted == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError("CUDA was asked for but this onnxruntime has no CUDA provider: install "
                             "galaxy-infer[gpu] (onnxruntime-gpu) in an environment without onnxruntime")
        providers = ([("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"] if wanted == "cuda"
                     else ["CPUExecutionProvider"])
        if model_bytes is None and not os.path.isfile(path):
            raise ModelError(f"model file not found: {path}")
        self.session = ort.InferenceSession(model_bytes if model_bytes is not None else str(path), options,
                                            providers=providers)
        self.info = parse_metadata(str(path), self.session.get_modelmeta().custom_metadata_map)
        _check_shapes(self.session, self.info)
        active = self.session.get_providers()
        if device == "cuda" and active[0] != "CUDAExecutionProvider":
            raise ModelError(
                f"CUDA was asked for but onnxruntime runs on {active[0]}: install galaxy-infer[gpu] "
                "(onnxruntime-gpu, without onnxruntime) and check that CUDA and cuDNN libraries load")
        self.providers = active
        self.device = "cuda" if active[0] == "CUDAExecutionProvider" else "cpu"
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self._padded: np.ndarray | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``(n, C, H, W)`` float32 -> ``(n, n_answers)`` outputs.

        A short last batch is zero-padded to the batch size in a buffer the predictor keeps, so a
        chunk costs no batch-sized allocation.
        """
        n = images.shape[0]
        out = np.empty((n, self.info.tree.n_answers), dtype=np.float32)
        images = np.ascontiguousarray(images, dtype=np.float32)
        b = self.batch_size
        for start in range(0, n, b):
            chunk = images[start:start + b]
            if chunk.shape[0] < b:
                if self._padded is None or self._padded.shape[1:] != chunk.shape[1:]:
                    self._padded = np.zeros((b, *chunk.shape[1:]), dtype=np.float32)
                self._padded[: chunk.shape[0]] = chunk
                self._padded[chunk.shape[0]:] = 0
                chunk = self._padded
            out[start:start + b] = self.session.run([self._output], {self._input: chunk})[0][: min(b, n - start)]
        return out
