"""Image decoding exactly as the official test script does it, with safety limits."""
from __future__ import annotations

import io
import os
import re
import typing
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image

from .config import IMAGE_EXTENSIONS  # noqa: F401 - re-exported
from .config import ALLOWED_FORMATS, BOMB_MIN_PIXELS, DEFAULT_MAX_PIXELS, MAX_PIXELS_PER_BYTE

# Modes whose convert("RGB") is lossy in a way that changes the result silently (16-bit clips to
# white, float TIFFs turn black): refused rather than guessed.
_REFUSED_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Pillow opens a 16-bit RGB/RGBA/LA PNG or TIFF as 8-bit "RGB"/"RGBA" (keeping the high byte only,
# so values 0..1023 become 0..3): the mode alone cannot tell, the file's own sample layout can
# (PNG: the decoder's raw mode from IHDR, e.g. "RGB;16B"; TIFF: the BitsPerSample tag).
_PNG_16BIT_RAWMODE = re.compile(r";16")


# HEIC/HEIF from phones. Registered at import, so every process that decodes (each Ray worker imports
# this module) has it. Only the primary image is decoded: thumbnails, depth maps and auxiliary images
# are never read. libheif applies the file's own rotation/mirror boxes (part of the format, unlike
# JPEG's EXIF orientation, which TruFor leaves alone); libheif's security limits stay on.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def allowed_formats() -> list[str]:
    """The allowed formats Pillow can open here (after loading its plugins: a fresh process has none)."""
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


class ImageDecodeError(ValueError):
    """A file that is not an allowed, decodable image within the limits."""


@dataclass
class DecodedImage:
    """Pixels as TruFor sees them, plus the format and EXIF fields stored in the file."""

    rgb: np.ndarray  # (H, W, 3) uint8
    format: str
    exif_make: str | None = None
    exif_model: str | None = None
    exif_software: str | None = None
    exif_orientation: int | None = None


def _exif_fields(im: Image.Image) -> dict:
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not lose the image
        return {}

    def text(tag: int) -> str | None:
        v = exif.get(tag)
        if v is None:
            return None
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return v.strip("\x00 ").strip() or None

    orientation = exif.get(274)
    return {"exif_make": text(271), "exif_model": text(272), "exif_software": text(305),
            "exif_orientation": int(orientation) if isinstance(orientation, int) else None}


def _deep_samples(im: Image.Image) -> str | None:
    """What makes this image more than 8 bits per sample, from the file's own declarations; else None."""
    if im.mode in _REFUSED_MODES:
        return f"mode {im.mode}"
    if im.format == "TIFF":
        bits = im.tag_v2.get(258)  # BitsPerSample, one per channel
        bits = bits if isinstance(bits, tuple) else (bits,)
        if any(isinstance(b, int) and b > 8 for b in bits):
            return f"{max(bits)} bits per sample"
    if im.format == "HEIF" and (im.info.get("bit_depth") or 8) > 8:
        # pillow-heif hands a 10/12-bit HEIC over as 8-bit "RGB" (shifted down): refused like a
        # 16-bit PNG, since the official preprocessing never sees such pixels.
        return f"{im.info['bit_depth']}-bit HEIF samples"
    if im.format == "PNG":
        for tile in im.tile:
            raw = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
            if isinstance(raw, str) and _PNG_16BIT_RAWMODE.search(raw):
                return f"16-bit PNG samples ({raw})"
    return None


def decode_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode to (H, W, 3) uint8 RGB as the official code does: alpha dropped, no EXIF transpose.

    Raises:
        ImageDecodeError: unsupported format, too many pixels, a decompression bomb (``MAX_PIXELS_PER_BYTE``),
            unsupported mode, or a broken file.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    nbytes = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=allowed_formats()) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
                if w * h > BOMB_MIN_PIXELS and w * h > MAX_PIXELS_PER_BYTE * nbytes:
                    raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels from a file of {nbytes} bytes "
                                           f"({w * h / max(nbytes, 1):.0f} pixels per byte, over {MAX_PIXELS_PER_BYTE} "
                                           f"above {BOMB_MIN_PIXELS // 1_000_000} MP): refused as a decompression bomb "
                                           "before decoding")
                depth = _deep_samples(im)
                if depth:
                    raise ImageDecodeError(f"{name}: {depth} (more than 8 bits per sample, or float) is not supported: "
                                           "converting it to 8-bit RGB would change the pixels silently")
                meta = _exif_fields(im)
                fmt = im.format
                rgb = np.asarray(im.convert("RGB"))
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not an image in an allowed format {ALLOWED_FORMATS}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: cannot decode: {type(e).__name__}: {e}") from e
    return DecodedImage(rgb=rgb, format=fmt, **meta)


def decode_rgb(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """(pixels, format) of ``decode_image``."""
    img = decode_image(source, max_pixels)
    return img.rgb, img.format


if typing.TYPE_CHECKING:
    import torch


def to_model_input(rgb: np.ndarray, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """(H, W, 3) uint8 -> (1, 3, H, W) ``dtype`` (default float32) divided by 256 (exact in float32 and
    float64, as the official code). torch is imported here: decoding alone (the scan's decode stage) needs none."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(rgb).transpose(2, 0, 1).copy())  # (H, W, 3) -> (3, H, W)
    return chw[None].to(dtype) / 256.0
