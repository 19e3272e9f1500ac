"""Contact sheet: one row per query, the query image then its neighbours, each captioned with its score.

Every image is fitted (aspect kept) and centred in a square tile of ``tile`` pixels on a white
background, with a caption strip of ``caption_height`` pixels below it. The query tile has a blue
frame. Layout: width ``(1 + k)·(tile + 2·margin)``, height ``rows·(tile + caption_height + 2·margin)``.

Example::

    sheet = contact_sheet([(query_image, [(image, "cat.jpg", 0.93), ...])], tile=160)
    sheet.save("neighbours.png")
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageOps

Neighbour = tuple[Image.Image | None, str, float]  # image (None if unreadable), name, score
QUERY_FRAME = (40, 90, 200)


def _fit(image: Image.Image, tile: int) -> Image.Image:
    fitted = ImageOps.contain(image.convert("RGB"), (tile, tile), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (tile, tile), "white")
    canvas.paste(fitted, ((tile - fitted.width) // 2, (tile - fitted.height) // 2))
    return canvas


def _caption(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else "…" + text[-(max_chars - 1) :]


def contact_sheet(
    rows: Sequence[tuple[Image.Image, str, Sequence[Neighbour]]],
    tile: int = 160,
    caption_height: int = 28,
    margin: int = 4,
) -> Image.Image:
    """Render ``rows`` of (query image, query name, neighbours) into one RGB image."""
    if not rows:
        raise ValueError("a contact sheet needs at least one query")
    columns = 1 + max(len(neighbours) for _, _, neighbours in rows)
    cell_w, cell_h = tile + 2 * margin, tile + caption_height + 2 * margin
    sheet = Image.new("RGB", (columns * cell_w, len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    max_chars = max(4, tile // 6)
    for row, (query, query_name, neighbours) in enumerate(rows):
        cells = [(query, f"query: {query_name}", None)] + [(img, name, score) for img, name, score in neighbours]
        for column, (image, name, score) in enumerate(cells):
            x, y = column * cell_w + margin, row * cell_h + margin
            if image is not None:
                sheet.paste(_fit(image, tile), (x, y))
            else:
                draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(200, 200, 200))
                draw.text((x + 4, y + tile // 2), "unreadable", fill="black")
            if score is None:
                draw.rectangle([x - margin, y - margin, x + tile + margin - 1, y + tile + margin - 1],
                               outline=QUERY_FRAME, width=margin)
            lines = [_caption(name, max_chars)] + ([f"{score:.3f}"] if score is not None else [])
            draw.multiline_text((x + 2, y + tile + margin), "\n".join(lines), fill="black", spacing=1)
    return sheet
