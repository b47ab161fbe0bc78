"""Object ids: one rule, unique within a run, stable across nightly runs, collisions loud.

The rule, first match wins:

1. a manifest's ``object_id`` column, as given;
2. with ``--id-keyword KEY``, the value of FITS header keyword ``KEY`` (primary header, else the
   first image extension); other files fall through to 3;
3. the file name without its extension(s) (``a/J1234.fits.gz`` -> ``J1234``), when no other input
   of the run shares that stem and no id already taken (a manifest id of the run, an id the
   ingest catalog holds) equals it;
4. otherwise the file's path relative to its input root, extension kept, ``/``-separated
   (``a/cutout.fits``, ``b/cutout.fits``). The root is the folder given, a glob's fixed leading
   folder, a manifest's folder, or a single file's folder;
5. where that too is shared (two input folders holding the same relative path), the path as
   given (``night1/J1.jpg``, ``night2/J1.jpg``).

Cutouts inside a shard (see :mod:`galaxy_infer.shards`) follow the same rule, the shard standing
for the file: an id the shard holds (its id column, a WebDataset JSON id) counts as given, like a
manifest's (rule 1); otherwise the shard's own fallback (``<shard file name>#<row>``, the tar key,
the HDU's EXTNAME) plays the file name's part (rule 3), and when another input shares it the id is
``<shard path below the input root>#<row>`` (rule 4), else ``<shard path as given>#<row>`` (rule 5).
Listing in an object store gives paths below the prefix as for a folder (``s3://b/in/a/x.jpg``
under ``s3://b/in`` is ``a/x.jpg``).

Ids that still coincide (a manifest, header or shard giving one id to two cutouts) are
*collisions*: each such input gets a reason naming the other path, so it becomes an ``error`` row
(``classify``) or is reported and left for a later run (ingest), never silently a second row with
that id. The same file listed twice with the same id is one input.

Functions here take plain records (``source_path``, ``object_id``: given id or None,
``relative_path``, and ``stem`` where the file-name part of rule 3 is not the path's), so they do
not care where the records came from.
"""
from __future__ import annotations

import collections
import io
import os
import warnings
from collections.abc import Collection, Mapping

from galaxy_infer import storage

COLLISION = "object id collision"
EXAMPLES = 3


def normalised_path(path: str) -> str:
    """A path's comparable form: absolute and normalised (URIs are left as they are)."""
    return path if "://" in path else os.path.normpath(os.path.abspath(path))


def drop_repeats(records: list[dict]) -> tuple[list[dict], int]:
    """Keep one of records naming the same file with the same explicit id (a folder and a glob overlapping)."""
    seen: set[tuple[str, str | None]] = set()
    kept = []
    for r in records:
        key = (normalised_path(r["source_path"]), r["object_id"])
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(records) - len(kept)


def header_object_ids(records: list[dict], keyword: str) -> None:
    """Fill ``object_id`` from FITS header ``keyword`` where a FITS file has it (rule 2)."""
    from astropy.io import fits

    from galaxy_infer.readers import FITS_SUFFIXES

    for r in records:
        if r["object_id"] is not None or r.get("error") or not r["source_path"].lower().endswith(FITS_SUFFIXES):
            continue
        path = r["source_path"]
        try:
            source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(source, memmap=False, lazy_load_hdus=True) as hdul:
                    value = None
                    for hdu in hdul:
                        if keyword in hdu.header:
                            value = hdu.header[keyword]
                            break
                        if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
                            break  # the image's own header lacks it
        except Exception:  # noqa: BLE001 - an unreadable file keeps the file-name rule; decoding says why
            continue
        if value is not None and str(value).strip():
            r["object_id"] = str(value).strip()


def assign_object_ids(records: list[dict], taken: Collection[str] = ()) -> None:
    """Fill ``object_id`` where it is None by rules 3 to 5; ``taken`` are ids other objects already have."""
    from galaxy_infer.readers import object_id_from_path as stem

    explicit = {r["object_id"] for r in records if r["object_id"] is not None}
    derived = [r for r in records if r["object_id"] is None]
    candidates = [r.get("stem") or stem(r["source_path"]) for r in derived]
    for fallback in ("relative_path", "source_path"):
        counts = collections.Counter(candidates)
        candidates = [c if counts[c] == 1 and c not in explicit and c not in taken else r[fallback]
                      for r, c in zip(derived, candidates)]
    for r, c in zip(derived, candidates):
        r["object_id"] = c


def id_collisions(records: list[dict], held: Mapping[str, str] | None = None) -> dict[int, str]:
    """Index of each record whose id another record (or a held object) also has -> a reason naming the other path."""
    held = held or {}
    paths: dict[str, list[str]] = collections.defaultdict(list)
    for r in records:
        paths[r["object_id"]].append(r["source_path"])
    reasons: dict[int, str] = {}
    for i, r in enumerate(records):
        others = [p for p in paths[r["object_id"]] if p != r["source_path"]]
        if r["object_id"] in held:
            others.insert(0, f"{held[r['object_id']]} (already in the catalog)")
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            reasons[i] = (f"{COLLISION}: {r['object_id']!r} is also the id of {others[0]}{more}; "
                          "give each file its own id (manifest object_id or FITS header keyword)")
    return reasons
