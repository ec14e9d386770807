"""Decoding and checking untrusted images, and CLIP preprocessing in numpy (no torch at run time).

Every way an upload can be wrong (empty, huge, not an image, truncated, a decompression bomb,
absurd dimensions) is its own typed error that the API turns into a 4xx; no other exception
escapes `decode_image`. Radiographs are often 16-bit grayscale: they are windowed to 8 bits on
their own value range, because Pillow's convert("RGB") clips them to near-black or white.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from appliance.errors import AppError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Pillow format -> (content type, file extension). MPO is how Pillow names many phone JPEGs.
FORMATS = {
    "JPEG": ("image/jpeg", ".jpg"),
    "MPO": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "TIFF": ("image/tiff", ".tif"),
    "BMP": ("image/bmp", ".bmp"),
    "WEBP": ("image/webp", ".webp"),
}
MAX_ASPECT_RATIO = 20
WINDOW_PERCENTILES = (0.5, 99.5)
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transposes that undo it (ImageOps.exif_transpose does the same, but
# needs the original image's mode, and 16-bit ones are converted first).
_ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


@dataclass(frozen=True)
class PreprocessParams:
    """CLIP preprocessing as recorded in the model manifest (open_clip's eval transform)."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # resize the short side to image_size, then center crop


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 60_000_000
    max_side: int = 16_384


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied, 8 bits per channel
    format: str  # Pillow format name: "JPEG", "PNG", ...
    content_type: str
    extension: str
    width: int
    height: int


class ImageError(AppError):
    """Base of every image validation failure."""


class EmptyImageError(ImageError):
    status_code = 400
    code = "empty_image"


class ImageTooLargeError(ImageError):
    status_code = 413
    code = "image_too_large"


class UnsupportedImageError(ImageError):
    status_code = 415
    code = "unsupported_image_type"


class CorruptImageError(ImageError):
    status_code = 400
    code = "corrupt_image"


class TooManyPixelsError(ImageError):
    status_code = 413
    code = "too_many_pixels"


class BadDimensionsError(ImageError):
    status_code = 422
    code = "bad_dimensions"


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    if not data:
        raise EmptyImageError("The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"The file has {len(data):,} bytes; the limit is {limits.max_bytes:,}."
        )
    image = _open(data)
    fmt = str(image.format)
    _check_dimensions(image.size, limits)
    try:
        image.load()  # header checks passed: now decoding is bounded
        rgb = _to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes means a broken file
        raise CorruptImageError(f"The {fmt} image is truncated or corrupt.") from exc
    content_type, extension = FORMATS[fmt]
    return DecodedImage(rgb, fmt, content_type, extension, rgb.width, rgb.height)


def _open(data: bytes) -> Image.Image:
    """Read only the header (Image.open is lazy), so a bomb is refused before it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(f"The image has too many pixels ({exc}).") from exc
    except (UnidentifiedImageError, ValueError) as exc:
        raise UnsupportedImageError(
            "Not a supported image: send JPEG, PNG, TIFF, BMP or WebP."
        ) from exc
    except Exception as exc:
        raise CorruptImageError("The image header is corrupt.") from exc
    if image.format not in FORMATS:
        raise UnsupportedImageError(
            f"{image.format} images are not accepted: send JPEG, PNG, TIFF, BMP or WebP."
        )
    return image


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadDimensionsError(f"The image is {width}x{height} pixels.")
    if width * height > limits.max_pixels:
        raise TooManyPixelsError(
            f"The image is {width}x{height} pixels; the limit is "
            f"{limits.max_pixels / 1e6:g} megapixels."
        )
    if max(width, height) > limits.max_side:
        raise BadDimensionsError(
            f"The image is {width}x{height} pixels; no side may exceed {limits.max_side}."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadDimensionsError(f"The image is {width}x{height}: too narrow to be a radiograph.")


def _to_rgb(image: Image.Image) -> Image.Image:
    orientation = image.getexif().get(0x0112, 1)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = window_to_8bit(np.asarray(image))
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Radiograph backgrounds are dark: transparent areas become black, not white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    for transpose in _ORIENTATION.get(orientation, ()):
        image = image.transpose(transpose)
    return image.convert("RGB")


def window_to_8bit(values: np.ndarray) -> Image.Image:
    """Map the bulk of a high-bit-depth image's values onto 0-255 (percentile window)."""
    data = values.astype(np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return Image.new("L", (values.shape[1], values.shape[0]))
    low, high = np.percentile(finite, WINDOW_PERCENTILES)
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(data, nan=low) - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def preprocess(image: Image.Image, params: PreprocessParams) -> np.ndarray:
    """RGB PIL image -> float32 [3, size, size], identical to open_clip's eval transform:
    BICUBIC resize of the short side (long side truncated), center crop with rounded offset,
    scale to [0, 1], normalize."""
    size = params.image_size
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    pixels = (pixels - np.asarray(params.mean, dtype=np.float32)) / np.asarray(
        params.std, dtype=np.float32
    )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[Image.Image], params: PreprocessParams) -> np.ndarray:
    return np.stack([preprocess(image, params) for image in images])
