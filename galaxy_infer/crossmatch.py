"""Cross-match a catalog by sky position with another catalog.

Two ways, by size:

* :func:`crossmatch` with astropy (``SkyCoord.match_to_catalog_sky``, a k-d tree in memory):
  thousands to a few million rows, nothing to install.
* :func:`to_hats` writes the catalog as HATS (HEALPix-partitioned Parquet with a margin cache)
  for LSDB, which cross-matches survey-scale catalogs partition by partition with Dask
  (``pip install "galaxy-infer[lsdb]"``); :func:`lsdb_crossmatch` is the matching call.

Rows without a position (error rows of files that had none, cutouts without WCS or manifest
coordinates) cannot be matched and are left out.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_infer import storage
from galaxy_infer.errors import InputError
from galaxy_infer.summary import open_catalog

SEPARATION = "separation_arcsec"


def read_table(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A galaxy-infer catalog folder, or a CSV, Parquet or FITS table (a local path or object-store URI), as a DataFrame."""
    if isinstance(source, pd.DataFrame):
        return source
    path = str(source)
    name = path.lower()
    if name.endswith(".csv"):
        return pd.read_csv(io.BytesIO(_read(path)))
    if name.endswith((".fits", ".fit", ".fits.gz")):
        from astropy.table import Table

        return Table.read(io.BytesIO(_read(path)), format="fits").to_pandas()
    return open_catalog(path).to_table().to_pandas()


def _read(path: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except InputError as exc:
        raise OSError(f"cannot read {path}: {exc}") from None


def write_table(frame: pd.DataFrame, out: str) -> None:
    """``frame`` as ``out``: CSV if the name ends in .csv, else Parquet; a local path or an object-store URI."""
    buffer = io.BytesIO()
    if out.lower().endswith(".csv"):
        frame.to_csv(buffer, index=False)
    else:
        frame.to_parquet(buffer, index=False)
    storage.write_bytes(out, buffer.getvalue())


def _positioned(frame: pd.DataFrame, ra: str, dec: str) -> pd.DataFrame:
    missing = [c for c in (ra, dec) if c not in frame.columns]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} column (columns: {', '.join(map(str, frame.columns))})")
    return frame[np.isfinite(frame[ra].astype(float)) & np.isfinite(frame[dec].astype(float))]


def crossmatch(catalog: str | os.PathLike | pd.DataFrame, other: str | os.PathLike | pd.DataFrame,
               radius_arcsec: float = 1.0, ra: str = "ra", dec: str = "dec", other_ra: str = "ra",
               other_dec: str = "dec", suffix: str = "_other") -> pd.DataFrame:
    """Each catalog row with a position, joined to its nearest ``other`` row within ``radius_arcsec``.

    Columns: the catalog's, then ``other``'s (names the catalog already has get ``suffix``), then
    ``separation_arcsec``. Rows without a match within the radius are left out (an inner join).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    left = _positioned(read_table(catalog), ra, dec).reset_index(drop=True)
    right = _positioned(read_table(other), other_ra, other_dec).reset_index(drop=True)
    if left.empty or right.empty:
        return pd.DataFrame(columns=[*left.columns, *_renamed(right, left).columns, SEPARATION])
    here = SkyCoord(left[ra].to_numpy(float) * u.deg, left[dec].to_numpy(float) * u.deg)
    there = SkyCoord(right[other_ra].to_numpy(float) * u.deg, right[other_dec].to_numpy(float) * u.deg)
    index, separation, _ = here.match_to_catalog_sky(there)
    close = separation.arcsec <= radius_arcsec
    matched = left[close].reset_index(drop=True)
    partners = _renamed(right, left, suffix).iloc[index[close]].reset_index(drop=True)
    return pd.concat([matched, partners], axis=1).assign(**{SEPARATION: separation.arcsec[close]})


def _renamed(right: pd.DataFrame, left: pd.DataFrame, suffix: str = "_other") -> pd.DataFrame:
    return right.rename(columns={c: f"{c}{suffix}" for c in right.columns if c in left.columns})


def to_hats(catalog: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, name: str | None = None,
            overwrite: bool = False, **lsdb_options) -> Path:
    """Write ``catalog`` (its rows with a position) as a HATS collection that ``lsdb.open_catalog`` reads.

    ``lsdb_options`` go to ``lsdb.from_dataframe`` (e.g. ``highest_order``, ``partition_rows``).
    The margin cache (5 arcsec by default) lets cross-matches find pairs across partition edges.
    """
    import lsdb

    frame = _positioned(read_table(catalog), "ra", "dec").reset_index(drop=True)
    if frame.empty:
        raise ValueError("no rows with a position (ra, dec) to export")
    for column in frame.columns:  # categories (ingest_date) become plain strings in HATS
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(str)
    out = Path(out)
    name = name or out.name
    hats = lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", catalog_name=name, **lsdb_options)
    hats.to_hats(out, catalog_name=name, overwrite=overwrite, progress_bar=False)
    return out


def lsdb_crossmatch(hats_path: str | os.PathLike, other: pd.DataFrame, radius_arcsec: float = 1.0,
                    other_ra: str = "ra", other_dec: str = "dec", other_name: str = "other") -> pd.DataFrame:
    """Cross-match a HATS catalog written by :func:`to_hats` with ``other`` through LSDB; nearest within the radius.

    ``other`` may be any size LSDB can hold; for two survey-scale catalogs open both with
    ``lsdb.open_catalog`` and call ``crossmatch`` directly (this function shows the call).
    """
    import lsdb

    left = lsdb.open_catalog(str(hats_path))
    right = lsdb.from_dataframe(other, ra_column=other_ra, dec_column=other_dec, catalog_name=other_name)
    suffixes = ("", "_" + other_name)
    result = left.crossmatch(right, radius_arcsec=radius_arcsec, n_neighbors=1, suffixes=suffixes,
                             suffix_method="overlapping_columns", log_changes=False).compute()
    return result.rename(columns={"_dist_arcsec": SEPARATION}).reset_index(drop=True)
