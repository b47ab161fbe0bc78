"""``galaxy-infer gallery``: the cutouts behind catalog rows, as a PNG mosaic and one HTML page.

Rows are chosen with a pandas query (``--where``), sorted by any column (``--sort``, descending
by default) and cut to ``--top N``. Each cutout is rendered with the recipe of the run that
classified it (read from the catalog's file metadata), through the same ``read_cutout`` and
``preprocess`` as the model, FITS included: the same percentile clip and asinh stretch, the same
centre crop. Only the output size differs (``tile`` pixels instead of the model's input size),
so the astronomer sees what the model saw, sharp enough to judge. ``view='full'`` shows the
whole cutout with the model's crop marked by corner ticks; ``view='model'`` only the crop. A
cutout that cannot be read becomes a grey tile with the reason; the gallery never stops on it.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from galaxy_infer import storage
from galaxy_infer.galaxy10 import add_galaxy10, rule_columns
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.readers import read_cutout
from galaxy_infer.summary import file_metadata, open_catalog

ID_COLUMNS = ("object_id", "source_path", "ra", "dec", "status", "error", "run_id")
VIEWS = ("full", "model")
TILE = 192
COLUMNS = 10
CAPTION_LINES = 4
FONT_SIZE = 13
BOX_COLOUR = (255, 210, 0)
PLACEHOLDER = (70, 70, 70)


@dataclass(frozen=True)
class Selection:
    """The chosen rows (in gallery order) and the recipe each row's run used."""

    rows: pd.DataFrame
    recipes: dict[str, Recipe]
    matched: int
    source: str
    sort: str | None
    where: str | None
    ascending: bool = False


def select(catalog: str | os.PathLike | pd.DataFrame, sort: str | None = None, where: str | None = None,
           top: int = 100, ascending: bool = False) -> Selection:
    """Rows of ``catalog`` matching ``where`` (pandas ``DataFrame.query`` syntax), sorted, first ``top``.

    ``galaxy10_class`` and ``galaxy10_confidence`` may be used in ``where`` and ``sort``. Only the
    columns the expression names are read from disk, so large catalogs stay cheap.
    """
    recipes: dict[str, Recipe] = {}
    if isinstance(catalog, pd.DataFrame):
        frame, source = catalog, "DataFrame"
    else:
        dataset = open_catalog(catalog)
        for meta in file_metadata(dataset):
            if "recipe" in meta:
                recipes[meta.get("run_id", "")] = Recipe.from_dict(json.loads(meta["recipe"]))
        text = f"{where or ''} {sort or ''}"
        wanted = [c for c in dataset.schema.names if c in ID_COLUMNS or c.endswith("_flag")
                  or re.search(rf"(?<![\w.]){re.escape(c)}(?!\w)", text)]
        if "galaxy10" in text:
            wanted += [c for c in rule_columns() if c not in wanted]
        frame, source = dataset.to_table(columns=wanted).to_pandas(), str(catalog)
    if "galaxy10" in f"{where or ''} {sort or ''}":
        frame = add_galaxy10(frame)
    if where:
        frame = frame.query(where)
    matched = len(frame)
    if sort:
        if sort not in frame.columns:
            raise ValueError(f"no column {sort!r} to sort by (columns: {', '.join(frame.columns)})")
        frame = frame.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return Selection(frame.head(top).reset_index(drop=True), recipes, matched, source, sort, where, ascending)


def render(path: str, recipe: Recipe, size: int = TILE, view: str = "full") -> tuple[np.ndarray, str | None]:
    """One cutout as ``(size, size, 3)`` uint8 through the model's reader and recipe, and None;
    or a grey placeholder and the reason it could not be read."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}")
    shown = replace(recipe, input_size=size, crop_fraction=1.0 if view == "full" else recipe.crop_fraction)
    try:
        pixels = preprocess(read_cutout(str(path), shown).pixels, shown)
    except Exception as exc:  # noqa: BLE001 - a missing or broken cutout is a grey tile, never a failed gallery
        return np.full((size, size, 3), PLACEHOLDER, np.uint8), str(exc) or type(exc).__name__
    image = (np.clip(pixels.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]), None


def _mark_crop(image: Image.Image, fraction: float) -> None:
    """Corner ticks around the central square the model sees (they leave the galaxy uncovered)."""
    size = image.width
    lo, hi = size * (1 - fraction) / 2, size * (1 + fraction) / 2 - 1
    tick = max(6, size // 12)
    draw = ImageDraw.Draw(image)
    for x, dx in ((lo, tick), (hi, -tick)):
        for y, dy in ((lo, tick), (hi, -tick)):
            draw.line([(x, y), (x + dx, y)], fill=BOX_COLOUR, width=2)
            draw.line([(x, y), (x, y + dy)], fill=BOX_COLOUR, width=2)


def _flags(row: pd.Series) -> list[str]:
    return [c.removeprefix("odd_").removesuffix("_flag") for c, v in row.items()
            if c.endswith("_flag") and pd.notna(v) and bool(v)]


def _value(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def caption(row: pd.Series, sort: str | None, rank: int) -> list[str]:
    """Object id, RA/Dec, the sort value, and the flags (or the error) of one row."""
    radec = ("RA, Dec unknown" if pd.isna(row.get("ra")) else f"RA {row['ra']:.5f}  Dec {row['dec']:+.5f}")
    lines = [f"#{rank} {row.get('object_id', '')}", radec]
    lines.append(f"{_value(row[sort])}  {sort}" if sort else str(row.get("galaxy10_class", "") or ""))
    if row.get("status") == "error":
        lines.append(f"error: {row.get('error')}")
    else:
        flags = _flags(row)
        lines.append("flags: " + (", ".join(flags) if flags else "none"))
    return lines


def _recipe(selection: Selection, row: pd.Series) -> Recipe:
    if row.get("run_id") in selection.recipes:
        return selection.recipes[row["run_id"]]
    return next(iter(selection.recipes.values()), Recipe())


def locate(source_path: str, root: str | os.PathLike | None) -> str:
    """``source_path`` as the catalog holds it; a relative one (the run was given relative inputs) taken from ``root``."""
    if root is None or os.path.isabs(source_path) or "://" in source_path:
        return source_path
    return os.path.join(root, source_path)


def tiles(selection: Selection, size: int = TILE, view: str = "full",
          root: str | os.PathLike | None = None) -> list[tuple[Image.Image, str | None]]:
    """Each selected cutout rendered (in parallel: reads are I/O-bound), crop marked in the full view."""
    def one(item: tuple[int, pd.Series]) -> tuple[Image.Image, str | None]:
        _, row = item
        recipe = _recipe(selection, row)
        pixels, problem = render(locate(row["source_path"], root), recipe, size, view)
        image = Image.fromarray(pixels)
        if problem is None and view == "full" and recipe.crop_fraction < 1:
            _mark_crop(image, recipe.crop_fraction)
        return image, problem

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, selection.rows.iterrows()))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


Rendered = list[tuple[Image.Image, str | None]]


def mosaic(selection: Selection, size: int = TILE, columns: int = COLUMNS, view: str = "full",
           root: str | os.PathLike | None = None, rendered: Rendered | None = None) -> Image.Image:
    """The PNG mosaic: one tile per row, its caption underneath, the reason written on placeholders.

    ``rendered``: tiles already made by :func:`tiles` (at any size), so a PNG and a page share one read.
    """
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 3
    pad = 6
    cell_w, cell_h = size + pad, size + CAPTION_LINES * line + 2 * pad
    n = max(1, len(selection.rows))
    cols = min(columns, n)
    sheet = Image.new("RGB", (cols * cell_w + pad, -(-n // cols) * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    rendered = rendered if rendered is not None else tiles(selection, size, view, root)
    for i, ((image, problem), (_, row)) in enumerate(zip(rendered, selection.rows.iterrows())):
        x, y = pad + (i % cols) * cell_w, pad + (i // cols) * cell_h
        sheet.paste(image if image.width == size else image.resize((size, size), Image.Resampling.LANCZOS), (x, y))
        if problem is not None:
            draw.text((x + 6, y + size // 2 - line), "cutout unavailable", fill=(255, 255, 255), font=font)
            draw.text((x + 6, y + size // 2), _fit(draw, problem, font, size - 12), fill=(255, 200, 200), font=font)
        for k, text in enumerate(caption(row, selection.sort, i + 1)):
            draw.text((x, y + size + 3 + k * line), _fit(draw, text, font, size), fill=(0, 0, 0), font=font)
    return sheet


def gallery_array(catalog: str | os.PathLike | pd.DataFrame, sort: str | None = None, where: str | None = None,
                  top: int = 100, ascending: bool = False, size: int = TILE, columns: int = COLUMNS,
                  view: str = "full", root: str | os.PathLike | None = None) -> np.ndarray:
    """The mosaic as an ``(H, W, 3)`` uint8 array, for notebooks (``plt.imshow(gallery_array(...))``)."""
    return np.asarray(mosaic(select(catalog, sort, where, top, ascending), size, columns, view, root))


def html_page(selection: Selection, size: int = 256, view: str = "full", root: str | os.PathLike | None = None,
              rendered: Rendered | None = None) -> str:
    """One self-contained HTML page: thumbnails inline (JPEG, base64) with their captions as text."""
    recipes = {json.dumps(r.__dict__, sort_keys=True) for r in selection.recipes.values()}
    figures = []
    rendered = rendered if rendered is not None else tiles(selection, size, view, root)
    for i, ((image, problem), (_, row)) in enumerate(zip(rendered, selection.rows.iterrows())):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=92)
        lines = caption(row, selection.sort, i + 1)
        if problem is not None:
            lines.append(f"cutout unavailable: {problem}")
        if "galaxy10_class" in row and selection.sort != "galaxy10_class" and pd.notna(row["galaxy10_class"]):
            lines.append(f"Galaxy10: {row['galaxy10_class']} ({row['galaxy10_confidence']:.2f})")
        text = "<br>".join(html.escape(t) for t in lines)
        figures.append(f'<figure><img src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}" '
                       f'width="{size}" height="{size}" alt="{html.escape(str(row.get("object_id")))}" '
                       f'title="{html.escape(str(row.get("source_path")))}"><figcaption>{text}</figcaption></figure>')
    order = "ascending" if selection.ascending else "descending"
    title = f"{selection.source}: {len(selection.rows)} of {selection.matched} rows"
    header = [f"<h1>{html.escape(title)}</h1>",
              f"<p>where: <code>{html.escape(selection.where or 'all rows')}</code> &nbsp; "
              f"sort: <code>{html.escape(selection.sort or 'catalog order')}</code>"
              f"{' (' + order + ')' if selection.sort else ''}</p>",
              "<p>Cutouts rendered with the model's recipe" + (" (whole cutout; the yellow corners mark the "
                                                                "centre crop the model sees)" if view == "full" else
                                                                " (the centre crop the model sees)") + ": "
              + "; ".join(f"<code>{html.escape(r)}</code>" for r in sorted(recipes)) + "</p>"]
    style = ("body{font-family:sans-serif;margin:1em}main{display:flex;flex-wrap:wrap;gap:10px}"
             f"figure{{margin:0;width:{size}px;font-size:12px;line-height:1.3}}"
             "figcaption{word-break:break-all}img{display:block;image-rendering:auto}")
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            + style + "</style></head><body>\n" + "\n".join(header) + "\n<main>\n" + "\n".join(figures)
            + "\n</main></body></html>\n")


def write_gallery(catalog: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, sort: str | None = None,
                  where: str | None = None, top: int = 100, ascending: bool = False, size: int = TILE,
                  columns: int = COLUMNS, view: str = "full",
                  root: str | os.PathLike | None = None) -> tuple[str, str, Selection]:
    """Write ``out.png`` (the mosaic) and ``out.html`` (the page), locally or to an object store;
    returns both paths and the selection.

    ``root``: the folder relative ``source_path`` values are taken from (default: the current one).
    """
    selection = select(catalog, sort, where, top, ascending)
    png, page = f"{out}.png", f"{out}.html"
    page_size = max(size, 256)
    rendered = tiles(selection, page_size, view, root)
    picture = io.BytesIO()
    mosaic(selection, size, columns, view, root, rendered).save(picture, "PNG")
    storage.write_bytes(png, picture.getvalue())
    storage.write_bytes(page, html_page(selection, page_size, view, root, rendered).encode("utf-8"))
    return png, page, selection
