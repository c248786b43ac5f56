"""The picture a face's image widget shows: decoded by Pillow and shrunk, in a thread worker of
the live detections view or of the stored-faces view."""

from __future__ import annotations

import io

from PIL import Image

#: The longest side of a thumbnail, in pixels.
THUMBNAIL_PX = 320


def decode_thumbnail(payload: bytes) -> Image.Image:
    """An RGB thumbnail of an encoded image; raises what Pillow raises on bytes it cannot read
    (many kinds, on corrupt data)."""
    with Image.open(io.BytesIO(payload)) as img:
        img.load()
        picture = img.convert("RGB")
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return picture
