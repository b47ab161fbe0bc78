"""End to end through a real local Ray, real onnxruntime and real Parquet."""
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from galaxy_infer.catalog import SUMMARY_NAME
from galaxy_infer.cli import main
from galaxy_infer.pipeline import RunConfig, WorkerPlan, classify
from galaxy_infer.schema import GZ2, ODD_FEATURES
from galaxy_infer.synthetic import write_sample
from tests.bad_inputs import write_corpus

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, tiny_model, local_ray):
    folder = tmp_path_factory.mktemp("bad")
    manifest, expected = write_corpus(folder / "inputs")
    summary = classify(RunConfig(inputs=[str(manifest)], out=str(folder / "catalog"), model=str(tiny_model),
                                 batch_size=4, progress=False))
    return summary, expected, pd.read_parquet(folder / "catalog")


def test_bad_input_corpus_gives_one_row_per_input_with_reasons(corpus_run):
    summary, expected, frame = corpus_run
    assert len(frame) == len(expected) == summary["rows"] == summary["inputs"]
    assert frame["object_id"].is_unique
    for row in frame.itertuples():
        outcome = expected[row.object_id]
        if outcome is None:
            assert row.status == "ok", (row.object_id, row.error)
            assert pd.isna(row.error)
        else:
            assert row.status == "error" and outcome in row.error, (row.object_id, row.error)
    assert summary["errors"] == sum(v is not None for v in expected.values())


def test_error_rows_have_null_predictions_and_ok_rows_are_consistent(corpus_run):
    _, _, frame = corpus_run
    errors, ok = frame[frame.status == "error"], frame[frame.status == "ok"]
    prediction_columns = list(GZ2.answer_columns) + [f"odd_{f}_prob" for f in ODD_FEATURES]
    assert errors[prediction_columns].isna().all().all()
    for q in GZ2.questions:
        cols = [f"{q.name}_{a}_fraction" for a in q.answer_names]
        assert (ok[cols].sum(axis=1) - 1).abs().max() < 1e-5
    assert (ok["smooth_or_featured_proportion_asked"] == 1).all()


def test_fits_position_comes_from_the_wcs(corpus_run):
    _, _, frame = corpus_run
    row = frame.set_index("object_id").loc["good.fits"]
    assert row.ra == pytest.approx(150.1) and row.dec == pytest.approx(2.2)
    assert pd.isna(frame.set_index("object_id").loc["good.jpg"].ra)


def test_catalog_files_carry_the_contract_metadata_and_summary(tmp_path, tiny_model, local_ray):
    write_sample(tmp_path / "in", n=6)
    out = tmp_path / "cat"
    summary = classify(RunConfig(inputs=[str(tmp_path / "in")], out=str(out), model=str(tiny_model), progress=False))
    meta = pq.read_metadata(next(out.glob("part-*.parquet"))).metadata
    keys = {k.decode() for k in meta}
    for key in ["schema_version", "model_id", "model_sha256", "recipe", "thresholds", "code_version",
                "run_id", "created_utc"]:
        assert f"galaxy_infer.{key}" in keys
    assert (out / SUMMARY_NAME).is_file() and summary["rows"] == 7
    assert not list(tmp_path.glob(".cat.tmp-*"))
    count = duckdb.sql(f"select count(*) from read_parquet('{out}/*.parquet') where status = 'ok'").fetchall()[0][0]
    assert count == 7


def test_existing_catalog_is_kept_unless_overwrite(tmp_path, tiny_model, local_ray):
    write_sample(tmp_path / "in", n=2)
    config = RunConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "cat"), model=str(tiny_model), progress=False)
    classify(config)
    with pytest.raises(FileExistsError):
        classify(config)
    config.overwrite = True
    config.run_id = "second"
    assert classify(config)["run_id"] == "second"
    assert set(pd.read_parquet(tmp_path / "cat")["run_id"]) == {"second"}


def test_real_cutouts_from_shared_data(tmp_path, tiny_model, local_ray, shared_data: Path):
    images = sorted((shared_data / "gz1_sdss" / "images").glob("*.jpg"))[:64]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in images) + "\n")
    summary = classify(RunConfig(inputs=[str(manifest), str(shared_data / "fits")], out=str(tmp_path / "cat"),
                                 model=str(tiny_model), batch_size=32, progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    fits_files = [p for p in (shared_data / "fits").iterdir() if p.suffix in (".fits", ".png")]
    hst_stamps = 2 * (3 + 2)  # the HST image files are multi-extension shards: one stamp per image HDU
    assert len(frame) == 64 + len(fits_files) - 4 + hst_stamps == summary["rows"]
    assert frame.object_id.str.endswith("images_01.fits#2").sum() == 2
    assert set(frame[frame.status == "error"]["error"]) == {"FITS has no image data"}
    decals = frame[frame.source_path.str.endswith("decals_dr5_example_a.fits")].iloc[0]
    assert decals.status == "ok" and decals.ra is not None


def test_cli_classify_exit_status_follows_the_error_share(tmp_path, tiny_model, local_ray, capsys):
    manifest, expected = write_corpus(tmp_path / "in")
    common = [str(manifest), "--model", str(tiny_model), "--batch-size", "8"]
    assert main(["classify", *common, "--out", str(tmp_path / "a"), "--max-error-fraction", "0.9"]) == 0
    assert main(["classify", *common, "--out", str(tmp_path / "b"), "--max-error-fraction", "0.05"]) == 3
    printed = capsys.readouterr().out
    assert "rows: %d" % len(expected) in printed and "file not found" in printed
    assert main(["classify", *common, "--out", str(tmp_path / "a")]) == 1


def test_work_in_flight_follows_the_cluster_and_gpu_tasks_wait_for_gpu_nodes():
    head = {"CPU": 8.0}
    gpu = WorkerPlan(gpus_per_task=1.0)
    assert gpu.task_resources == {"num_cpus": 1, "num_gpus": 1.0}
    assert (gpu.slots(head), gpu.in_flight(head)) == (0, 8)  # decoded chunks wait for GPU nodes: the autoscaler's cue
    assert gpu.in_flight({"CPU": 16.0, "GPU": 2.0}) == 2 * 2 + 16
    assert WorkerPlan(gpus_per_task=0.5).slots({"CPU": 4.0, "GPU": 2.0}) == 4
    assert not gpu.runnable_on([{"Alive": True, "Resources": head}])
    assert not gpu.runnable_on([{"Alive": False, "Resources": {"CPU": 4.0, "GPU": 1.0}}])
    assert gpu.runnable_on([{"Alive": True, "Resources": head}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}])
    assert gpu.chunk_rows(100, 1024, head) == 13  # a small run spreads over every decoding CPU
    cpu = WorkerPlan(gpus_per_task=0.0)
    assert (cpu.task_resources, cpu.in_flight({"CPU": 2.0}), cpu.in_flight({"CPU": 6.0})) == ({"num_cpus": 1}, 4, 12)
    assert WorkerPlan(gpus_per_task=1.0, fixed_slots=3).in_flight({"CPU": 1.0}) == 7


def test_a_local_ray_without_the_gpus_asked_for_fails_at_once(tmp_path, tiny_model, local_ray):
    write_sample(tmp_path / "cutouts", 2, seed=3, size=64)
    with pytest.raises(RuntimeError, match="prediction tasks need 1 CPU, 1 GPU each, but this local Ray has no such"):
        classify(RunConfig(inputs=[str(tmp_path / "cutouts")], out=str(tmp_path / "catalog"), model=str(tiny_model),
                           device="auto", num_gpus_per_worker=1, progress=False))
    assert not (tmp_path / "catalog").exists()
