"""End to end through a real local Ray, real onnxruntime and real Parquet."""
import collections
import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from galaxy_infer.catalog import SUMMARY_NAME
from galaxy_infer.cli import main
from galaxy_infer.cluster import WorkerPlan
from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.schema import GZ2, ODD_FEATURES
from galaxy_infer.synthetic import write_fits_cutout, write_sample
from galaxy_infer.worklist import discover
from PIL import Image

from tests.bad_inputs import KINDS, write_corpus
from tests.onnx_models import build_log_model

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


def test_each_error_row_of_the_corpus_has_its_kind_and_the_summary_counts_kinds(corpus_run):
    summary, expected, frame = corpus_run
    kinds = dict(zip(frame.object_id, frame.error_kind))
    assert {name: kinds[name] for name, outcome in expected.items() if outcome is not None} == KINDS
    assert all(pd.isna(kinds[name]) for name, outcome in expected.items() if outcome is None)
    assert summary["errors_by_kind"] == dict(collections.Counter(KINDS.values()).most_common())
    assert set(summary["error_examples"]) == set(KINDS.values())


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


def test_colliding_object_ids_are_error_rows_naming_both_paths_and_exit_3(tmp_path, tiny_model, local_ray, capsys):
    write_sample(tmp_path / "a", n=2, seed=1)
    write_sample(tmp_path / "b", n=2, seed=1)  # the same file names in two folders
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,object_id\na/{names[0]},SAME\nb/{names[1]},SAME\n")
    status = main(["classify", str(manifest), str(tmp_path / "a"), "--out", str(tmp_path / "cat"),
                   "--model", str(tiny_model), "--max-error-fraction", "1.0"])
    captured = capsys.readouterr()
    assert status == 3 and "share an object id" in captured.err
    frame = pd.read_parquet(tmp_path / "cat")
    same = frame[frame.object_id == "SAME"]
    assert len(same) == 2 and (same.status == "error").all() and (same.error_kind == "id-collision").all()
    first, second = same.sort_values("source_path").itertuples()
    assert second.source_path in first.error and first.source_path in second.error
    # The folder's files share stems with nothing else, so they keep them; all were classified.
    assert (frame[frame.object_id != "SAME"].status == "ok").all() and len(frame) == 2 + len(names)
    summary = json.loads((tmp_path / "cat" / SUMMARY_NAME).read_text())
    assert summary["id_collisions"] == 2 and summary["errors_by_reason"]["object id collision"] == 2


def test_the_same_file_name_in_many_folders_gives_distinct_ids_and_all_rows_ok(tmp_path, tiny_model, local_ray):
    for sub in ("obj1", "obj2", "obj3"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        write_fits_cutout(tmp_path / "in" / sub / "cutout.fits", np.random.default_rng(len(sub)))
    summary = classify(RunConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "cat"), model=str(tiny_model),
                                 progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    assert summary["id_collisions"] == 0 and (frame.status == "ok").all()
    assert sorted(frame.object_id) == ["obj1/cutout.fits", "obj2/cutout.fits", "obj3/cutout.fits"]


def test_ids_settled_after_the_listing_amend_the_parts_already_written(tmp_path, tiny_model, local_ray):
    """Tasks start on provisional ids (given, else the stem); the rule's final answers, known once the
    listing ends, amend the staged parts: the catalog equals the rule's records row for row."""
    for sub in ("a", "b"):
        write_sample(tmp_path / "in" / sub, n=3)
    for sub in ("a", "b"):  # same stem in two folders: both fall back to their relative paths
        write_fits_cutout(tmp_path / "in" / sub / "twin.fits", np.random.default_rng(len(sub)))
    files = sorted(p for p in (tmp_path / "in").rglob("*") if p.is_file())
    manifest = tmp_path / "in.csv"
    manifest.write_text("path,object_id\n" + f"{files[0]},M1\n{files[0]},M1\n{files[1]},SAME\n{files[2]},SAME\n")
    inputs = [str(tmp_path / "in"), str(manifest)]
    summary = classify(RunConfig(inputs=inputs, out=str(tmp_path / "cat"), model=str(tiny_model), task_rows=2,
                                 max_error_fraction=1.0, progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    expected = pd.DataFrame(discover(inputs))
    assert len(frame) == len(expected) == summary["inputs"] == summary["rows"] == len(files) + 3
    got = sorted(zip(frame.object_id, frame.source_path, frame.error_kind.fillna("")))
    want = sorted(zip(expected.object_id, expected.source_path, expected.get("error_kind", "").fillna("")))
    assert got == want
    assert {"a/twin.fits", "b/twin.fits"} <= set(frame.object_id)
    assert summary["id_collisions"] == 2 and summary["errors_by_kind"] == {"id-collision": 2}
    assert summary["ok"] == len(frame) - 2
    parts = sorted(p.name for p in (tmp_path / "cat").glob("*.parquet"))
    assert len({name[:17] for name in parts}) == len(parts)  # an amended part replaced its original


def test_a_missing_input_argument_fails_before_any_work_with_exit_1(tmp_path, tiny_model, capsys):
    write_sample(tmp_path / "in", n=1)
    status = main(["classify", str(tmp_path / "in"), str(tmp_path / "typo"), "--out", str(tmp_path / "cat"),
                   "--model", str(tiny_model)])
    assert status == 1 and "typo" in capsys.readouterr().err
    assert not list(tmp_path.glob("*cat*")) and not list(tmp_path.glob(".cat*"))


def test_a_file_name_that_is_not_utf8_is_an_error_row_and_the_run_goes_on(tmp_path, tiny_model, local_ray):
    write_sample(tmp_path / "in", n=2)
    good = next((tmp_path / "in").glob("*.jpg"))
    with open(os.path.join(os.fsencode(tmp_path / "in"), b"\xff\xfe-cutout.jpg"), "wb") as f:
        f.write(good.read_bytes())
    summary = classify(RunConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "cat"), model=str(tiny_model),
                                 progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    assert len(frame) == summary["inputs"] == 4
    bad = frame[frame.status == "error"]
    assert len(bad) == 1 and "not valid UTF-8" in bad.iloc[0].error
    assert bad.iloc[0].source_path.endswith("\\xff\\xfe-cutout.jpg")


def test_non_finite_model_outputs_are_error_rows_not_ok_rows_of_nan(tmp_path, local_ray):
    model = build_log_model(tmp_path / "log.onnx")
    write_sample(tmp_path / "in", n=3)
    Image.new("RGB", (128, 128)).save(tmp_path / "in" / "black.png")
    summary = classify(RunConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "cat"), model=str(model),
                                 progress=False))
    frame = pd.read_parquet(tmp_path / "cat").set_index("object_id")
    black = frame.loc["black"]
    assert black.status == "error" and black.error.startswith("model output is not finite") and black.error_kind == "model-output"
    assert pd.isna(black.odd_ring_prob) and not black.odd_ring_flag
    ok = frame.drop(index="black")
    assert (ok.status == "ok").all() and summary["errors"] == 1
    numeric = ok.select_dtypes("float32")
    assert np.isfinite(numeric.to_numpy()).all()


def test_error_summary_groups_reasons_by_kind_with_a_few_examples(tmp_path, tiny_model, local_ray, capsys):
    for i in range(12):
        (tmp_path / f"bad{i:02d}.jpg").write_bytes(bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes([i]) * (50 + i))
        (tmp_path / f"text{i:02d}.png").write_bytes(b"not a png %d" % i)
    summary = classify(RunConfig(inputs=[str(tmp_path)], out=str(tmp_path / "cat"), model=str(tiny_model),
                                 progress=False))
    kinds, examples = summary["errors_by_kind"], summary["error_examples"]
    assert kinds == {"corrupt": 24} == {k: sum(summary["errors_by_reason"].values()) for k in kinds}
    assert set(examples) == set(kinds) and all(len(e) == 3 for e in examples.values())
    example = next(iter(examples.values()))[0]
    assert set(example) == {"source_path", "error"} and example["source_path"].startswith(str(tmp_path))


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


def test_chunks_are_large_through_a_run_and_shrink_towards_its_end():
    """Guided self-scheduling: a 10^6-row run on 2 CPUs in 76 tasks (245 at a fixed 4,096), the last
    ones small enough that neither CPU waits long for the other; a small run still uses both."""
    cpu, two = WorkerPlan(gpus_per_task=0.0), {"CPU": 2.0}
    sizes, total = [], 1_000_000
    while (taken := sum(sizes)) < total:
        sizes.append(min(cpu.guided_rows(total - taken, total, 16384, two), total - taken))
    assert sizes[0] == 16384 and max(sizes) == 16384 and len(sizes) == 76
    assert sizes == sorted(sizes, reverse=True) and sizes[-4:] == [256, 256, 256, 117]
    assert cpu.guided_rows(40, 40, 16384, two) == 20
    assert cpu.guided_rows(10, 40, 16384, two) == 20  # never under a small run's share
    assert WorkerPlan(gpus_per_task=1.0).guided_rows(10_000, 10_000, 1024, {"CPU": 8.0}) == 625  # GPU: per decoding CPU


def test_a_local_ray_without_the_gpus_asked_for_fails_at_once(tmp_path, tiny_model, local_ray):
    write_sample(tmp_path / "cutouts", 2, seed=3, size=64)
    with pytest.raises(RuntimeError, match="prediction tasks need 1 CPU, 1 GPU each, but this local Ray has no such"):
        classify(RunConfig(inputs=[str(tmp_path / "cutouts")], out=str(tmp_path / "catalog"), model=str(tiny_model),
                           device="auto", num_gpus_per_worker=1, progress=False))
    assert not (tmp_path / "catalog").exists()
