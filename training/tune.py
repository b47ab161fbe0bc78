"""Ray Tune search over learning rate, width and augmentation strength, sized for 2 local CPUs.

Inputs are prepared (and cached) once in the driver and handed to every trial through the Ray
object store; each trial trains a few epochs with one thread and reports validation loss, which
an ASHA scheduler uses to stop poor trials early.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from galaxy_infer.cluster import local_ray_guard
from training.config import Config, override
from training.train import Prepared, fit, prepare

SEARCH_SPACE_DOC = {"lr": "log-uniform 3e-4 .. 1e-2", "width": "8, 12, 16", "aug_strength": "uniform 0.3 .. 1.0"}


def _trial(params: dict[str, Any], config: Config, prepared: Prepared) -> None:
    from ray import tune

    trial_dir = Path(tune.get_context().get_trial_dir())
    trial = override(config, model={"width": int(params["width"])},
                     train={"lr": float(params["lr"]), "aug_strength": float(params["aug_strength"]), "threads": 1},
                     output={"run_dir": str(trial_dir / "run"), "onnx": ""})
    fit(trial, prepared, report=lambda row: tune.report({"val_loss": row["val_loss"], "epoch": row["epoch"]}))


def tune(config: Config, num_samples: int = 4, epochs: int = 3, storage: str | None = None,
         num_cpus: int = 2) -> dict[str, Any]:
    """Run the search; returns the best parameters and their validation loss."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    config = override(config, train={"epochs": epochs, "patience": epochs + 1, "max_minutes": 0})
    prepared = prepare(config)
    storage = str(Path(storage or Path(config.output.run_dir) / "tune").resolve())
    if not ray.is_initialized():
        with local_ray_guard():  # a fresh Ray of its own, on loopback, with a per-run token
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=500 * 1024 * 1024,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        trainable = rt.with_resources(rt.with_parameters(_trial, config=config, prepared=prepared), {"cpu": 1})
        tuner = rt.Tuner(
            trainable,
            param_space={"lr": rt.loguniform(3e-4, 1e-2), "width": rt.choice([8, 12, 16]),
                         "aug_strength": rt.uniform(0.3, 1.0)},
            tune_config=rt.TuneConfig(metric="val_loss", mode="min", num_samples=num_samples,
                                      scheduler=ASHAScheduler(max_t=epochs, grace_period=1, time_attr="epoch"),
                                      max_concurrent_trials=num_cpus),
            run_config=rt.RunConfig(storage_path=storage, name="search", verbose=0),
        )
        results = tuner.fit()
        best = results.get_best_result()
        return {"best_params": best.config, "best_val_loss": best.metrics["val_loss"],
                "trials": len(results), "storage": storage}
    finally:
        ray.shutdown()
