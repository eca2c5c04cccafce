"""Images as item contents: a ``PIL.Image.Image`` is stored as lossless PNG bytes.

Pillow is an optional extra (``pip install 'lsmvec[images]'``) and is never imported here: an
Image can only exist once its caller has imported ``PIL.Image``, so ``is_image`` looks for that
module in ``sys.modules`` and costs nothing to users without Pillow. The conversion calls the
image's own ``save``, so it needs no import either.

PNG keeps every pixel of the modes it can hold (1, L, LA, P, RGB, RGBA, 16-bit I;16); other
modes (CMYK, YCbCr, LAB, HSV, F, 32-bit I, ...) are refused rather than converted, since any
conversion would change pixel values and the stored bytes would no longer be the image given.
Only pixels (and a palette, transparency, ICC profile PNG carries) are kept: EXIF and other
``info`` of the source file are not. ``get`` returns the PNG bytes; ``PIL.Image.open(
io.BytesIO(data))`` gives the image back.
"""
from __future__ import annotations

import io
import sys
from typing import Any

from lsmvec.wal.errors import InvalidContentsError

__all__ = ["is_image", "image_contents", "PNG_MODES"]

PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})
"""Modes PNG stores without changing a pixel value (I;16B reads back as I;16: same values)."""


def is_image(value: Any) -> bool:
    """Whether `value` is a PIL image (of any subclass: PngImageFile, JpegImageFile, ...)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def image_contents(value: Any, where: str) -> tuple[Any, Any]:
    """(contents to store, image to embed): ``(png_bytes, value)`` for a PIL image, else
    ``(value, None)`` unchanged. The PNG is made once here; embeddings use the image itself.
    Raises InvalidContentsError, naming `where` (the item and field), for a mode PNG cannot
    hold losslessly or an image Pillow fails to encode (e.g. a truncated file)."""
    if not is_image(value):
        return value, None
    if value.mode not in PNG_MODES:
        raise InvalidContentsError(
            f"{where}: a {value.mode} image cannot be stored as lossless PNG (modes "
            f"{', '.join(sorted(PNG_MODES))}); convert it first, e.g. image.convert('RGB')")
    buffer = io.BytesIO()
    try:
        value.save(buffer, format="PNG")
    except (OSError, ValueError) as exc:    # Pillow's errors for unreadable or unwritable data
        raise InvalidContentsError(f"{where}: the image could not be encoded as PNG "
                                   f"({exc.__class__.__name__}: {exc})") from None
    return buffer.getvalue(), value
