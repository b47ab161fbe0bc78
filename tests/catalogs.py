"""Real catalogs for tests of what reads them: the pipeline's own stages and writer, in this process.

Ray is tested in test_pipeline; readers of catalogs (gallery, summary, cross-match) only need a
catalog exactly as the pipeline writes it, which these stages give in a second instead of a
Ray start-up.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from galaxy_infer.catalog import CatalogWriter, file_metadata
from galaxy_infer.model import Predictor, bundled_model_path, load_model_info
from galaxy_infer.options import new_run_id
from galaxy_infer.pipeline import predict_and_postprocess, read_and_preprocess


def gz2_manifest(shared_data: Path, n: int, folder: Path, extra: list[dict] | None = None) -> Path:
    """A manifest of the first ``n`` gz2_votes cutouts with their SDSS ids and positions, plus ``extra`` rows."""
    labels = pd.read_csv(shared_data / "gz2_votes" / "labels.csv").head(n)
    rows = pd.DataFrame({"path": [str(shared_data / "gz2_votes" / f) for f in labels.file],
                         "object_id": labels.dr7objid.astype(str), "ra": labels.ra, "dec": labels.dec})
    manifest = folder / "manifest.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat([rows, pd.DataFrame(extra or [], columns=rows.columns)]).to_csv(manifest, index=False)
    return manifest


def build_catalog(manifest: Path, out: Path, model: Path | None = None) -> Path:
    """Classify a manifest's cutouts with the bundled model (or ``model``) into a catalog folder at ``out``."""
    records = pd.read_csv(manifest)
    info = load_model_info(str(model or bundled_model_path()))
    predictor = Predictor(info.path, device="cpu", batch_size=64)
    run_id = new_run_id()
    batch = {"object_id": records.object_id.astype(str).to_numpy(object),
             "source_path": records.path.to_numpy(object),
             "ra": records.ra.to_numpy(float), "dec": records.dec.to_numpy(float)}
    table = predict_and_postprocess(read_and_preprocess(batch, info.recipe), predictor, run_id)
    with CatalogWriter(out, file_metadata(info, run_id), run_id) as writer:
        writer.write(table)
        writer.commit(writer.stats.summary(run_id=run_id))
    return out
