"""What a run is, whoever starts it: one dataclass whose fields are the command-line options and profile keys.

``galaxy-infer classify``, ``galaxy-infer ingest``, the Ray batch job (``jobs/classify_catalog.py``)
and the nightly job (``jobs/nightly_ingest.py``) all take :class:`RunOptions`. Its fields generate
their options (``--batch-size`` from ``batch_size``, one help text each) and name the keys a hardware
profile (``jobs/profiles/*.toml``) may set, so an option added here appears everywhere at once.
"""
from __future__ import annotations

import argparse
import os
import typing
import uuid
from dataclasses import Field, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from galaxy_infer.cluster import GPU_WAIT_SECONDS
from galaxy_infer.limits import DEFAULT as DEFAULT_LIMITS
from galaxy_infer.limits import MB, Limits
from galaxy_infer.model import DEVICES, resolve_model
from galaxy_infer.shards import ShardFields
from galaxy_infer.storage import ANONYMOUS_ENV

DEFAULT_MAX_ERROR_FRACTION = 0.1


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A :class:`RunOptions` field that is also a command-line option (``argparse_kwargs``: choices, metavar, flag)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


SHARD_FIELD_HELP = {
    "image": "the image stack or image-bytes column",
    "id": "the object id field (default: object_id, id_str, iauname or dr8_id; else <shard>#<row>)",
    "ra": "the right ascension field (default: ra)",
    "dec": "the declination field (default: dec)",
}
"""Help for ``--image-field`` etc., the :class:`ShardFields` of a run."""


@dataclass(kw_only=True)
class RunOptions:
    """How to classify: model, device, sizes, cluster, error policy, storage. Shared by classify and ingest."""

    model: str = option("default", "ONNX file exported by galaxy-infer training, or a bundled model: 'default' "
                                   "(float32) or 'int8' (quantized: same test metrics, faster on CPU)")
    device: str = option("auto", "where onnxruntime runs: cuda fails unless the GPU is really used; auto takes "
                                 "cuda when available, else cpu", choices=DEVICES)
    batch_size: int | None = option(None, "images per prediction batch; the last batch is zero-padded (default: "
                                          "the model's preference, else 256)")
    task_rows: int | None = option(None, "cutouts per Ray task: fewer spread a small run over more workers "
                                         "(default: the model's preference, else up to 16384 on CPU workers, "
                                         "which decode a batch at a time, and on GPU as many as fit 64 MB of "
                                         "pixels, at most 16384; these defaults shrink towards the run's end "
                                         "so no worker waits long for the others)")
    dirichlet_intervals: bool = option(False, "for models that predict Dirichlet concentrations (Zoobot), also "
                                              "write each answer's concentration and a 90%% interval of its fraction")
    num_cpus: int | None = option(None, "CPUs for the local Ray started when no cluster is given (default: all)")
    num_workers: int | None = option(None, "chunks classified at once (default: one per CPU, or one per "
                                           "--num-gpus-per-worker of the GPUs with cuda)")
    num_gpus_per_worker: float | None = option(None, "GPUs each prediction task reserves (default: 1 with cuda, "
                                                     "0 with cpu)")
    address: str | None = option(None, "Ray cluster address (default: RAY_ADDRESS if set, else a local Ray)")
    gpu_wait_seconds: float = option(GPU_WAIT_SECONDS, "on a cluster, fail when no node can run a prediction "
                                                       "task (GPU nodes scaling from zero) for this long")
    object_store_mb: int | None = option(None, "object store of the local Ray started when no cluster is given "
                                               "(default: 1024)")
    id_keyword: str | None = option(None, "take each FITS file's object id from header keyword KEY (e.g. OBJID); "
                                          "other files keep the file-name rule (default: manifest object_id, "
                                          "else the file name)", metavar="KEY")
    anonymous: bool = option(False, "read s3:// inputs unsigned (public buckets); credentials otherwise come from "
                                    "the AWS chain: AWS_* variables, AWS_PROFILE, instance or pod roles. "
                                    "AWS_ENDPOINT_URL selects an S3-compatible store")
    max_error_fraction: float = option(DEFAULT_MAX_ERROR_FRACTION, "exit with status 3 when more than this share "
                                                                   "of the objects tried are errors; what was "
                                                                   "classified is still written")
    progress: bool | None = option(None, "no progress (default: a bar on a terminal, else a plain line every "
                                         "30 s)", flag="--no-progress")
    shard_fields: ShardFields = field(default_factory=ShardFields)
    """Image/id/ra/dec field names for shards whose layout is ambiguous (``--image-field`` ...)."""
    limits: Limits = field(default_factory=Limits)
    """Decoding limits every file is checked against before its bytes (``--max-megapixels`` ...)."""
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)

    def apply_storage(self) -> None:
        """Make ``anonymous`` hold for every filesystem this process and the Ray workers it starts open."""
        if self.anonymous:
            os.environ[ANONYMOUS_ENV] = "1"


def _cli_fields() -> list[Field]:
    return [f for f in fields(RunOptions) if "help" in f.metadata]


def profile_keys() -> set[str]:
    """What a hardware profile may set: every option of :class:`RunOptions`."""
    return {f.name for f in _cli_fields()}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add every :class:`RunOptions` field to ``parser`` as ``--field-name``, with its help and default."""
    hints = typing.get_type_hints(RunOptions)
    for f in _cli_fields():
        meta = dict(f.metadata)
        flag, help_text = meta.pop("flag", "--" + f.name.replace("_", "-")), meta.pop("help")
        if flag.startswith("--no-"):
            parser.add_argument(flag, dest=f.name, action="store_const", const=False, default=f.default, help=help_text)
        elif hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        else:
            kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            if f.default is not None and "(default" not in help_text:
                help_text += f" (default: {f.default:g})" if isinstance(f.default, float) else f" (default: {f.default})"
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text, **meta)
    group = parser.add_argument_group("shards", "fields of HDF5/Parquet/npz shards and WebDataset JSON, when "
                                                "detection is ambiguous (default: detected)")
    for name in (f.name for f in fields(ShardFields)):
        group.add_argument(f"--{name}-field", dest=f"{name}_field", default=None, help=SHARD_FIELD_HELP[name])
    group = parser.add_argument_group("limits", "every input is checked against these from its header or metadata "
                                                "before its bytes are decompressed or read (galaxy_infer/limits.py)")
    group.add_argument("--max-megapixels", type=float, default=DEFAULT_LIMITS.pixels / 1e6,
                       help="pixels of one image, all bands together (default: %(default)g)")
    group.add_argument("--max-cutout-mb", type=float, default=DEFAULT_LIMITS.cutout_bytes / MB,
                       help="bytes of one decoded cutout, e.g. one row of an HDF5/NumPy stack (default: %(default)g)")
    group.add_argument("--max-decompressed-mb", type=float, default=DEFAULT_LIMITS.decompressed_bytes / MB,
                       help="bytes one compressed object may inflate to: a .fits.gz, a tar member, an HDF5 chunk, "
                            "a Parquet row group's image column, a single cutout file (default: %(default)g)")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`RunOptions` keyword arguments parsed by :func:`add_run_options`."""
    values = {f.name: getattr(args, f.name) for f in _cli_fields()}
    values["shard_fields"] = ShardFields(**{f.name: getattr(args, f"{f.name}_field") for f in fields(ShardFields)})
    values["limits"] = Limits(pixels=int(args.max_megapixels * 1e6), cutout_bytes=int(args.max_cutout_mb * MB),
                              decompressed_bytes=int(args.max_decompressed_mb * MB))
    return values

