"""Decoding and checking untrusted images, and CLIP preprocessing in numpy (no torch at run time).

Every way an upload can be wrong (empty, huge, not an image, truncated, a decompression bomb,
absurd dimensions) is its own typed error that the API turns into a 4xx; no other exception
escapes `decode_image`. Radiographs are often 16-bit grayscale: they are windowed to 8 bits on
their own value range, because Pillow's convert("RGB") clips them to near-black or white.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from appliance.errors import AppError
from appliance.settings import ImageLimits

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Pillow format -> (content type, file extension). MPO is how Pillow names many phone JPEGs.
# GIF is left out on purpose: a palette animation format is not how radiographs are exported.
FORMATS = {
    "JPEG": ("image/jpeg", ".jpg"),
    "MPO": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "TIFF": ("image/tiff", ".tif"),
    "BMP": ("image/bmp", ".bmp"),
    "WEBP": ("image/webp", ".webp"),
}
# The Pillow parsers tried on uploads (MPO images come out of the JPEG one).
_PARSERS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
ACCEPTED = "send a JPEG, PNG, TIFF, BMP or WebP image"
# Magic numbers of the accepted formats: a file that starts like one of them but that Pillow
# cannot read is a broken image, not an unsupported type.
_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
    b"BM",
)
MAX_ASPECT_RATIO = 20  # panoramic radiographs are ~2.5:1; 20:1 is a strip, not a radiograph
WINDOW_PERCENTILES = (0.5, 99.5)
_WINDOW_SAMPLE = 1 << 22  # percentiles from at most ~4 M values: exact enough, light on memory
_WINDOW_CHUNK = 1 << 20  # values converted to float at a time while windowing
_HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})

# Never decode a partial file: a truncated upload must fail, not embed half a grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transposes that undo it, as ImageOps.exif_transpose does; applied by
# hand because a 16-bit image is windowed first and the windowed copy has no EXIF left.
_ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


# Pillow's image memory: blocks of at most this size, and how many freed ones it keeps.
_PILLOW_BLOCK_BYTES = 2 << 20
_PILLOW_BLOCKS_KEPT = 8


def keep_pillow_blocks() -> None:
    """Let Pillow reuse its freed image memory (at most 16 MB kept) instead of returning it.

    A serving process keeps large allocations in mmap (see encoder._pin_mmap_threshold), so
    each decoded radiograph was mapped and page-faulted afresh: decoding a 1 MP JPEG measured
    3.6 instead of 4.7 ms with the blocks kept."""
    from PIL import _imaging  # Pillow's C core, where these knobs live

    _imaging.set_block_size(_PILLOW_BLOCK_BYTES)
    _imaging.set_blocks_max(_PILLOW_BLOCKS_KEPT)


@dataclass(frozen=True)
class PreprocessParams:
    """CLIP preprocessing as recorded in the model manifest (open_clip's eval transform)."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # resize the short side to image_size, then center crop

    def __post_init__(self) -> None:
        # Only open_clip's default eval transform is implemented: a manifest asking for another
        # must fail when it is loaded, not silently embed images differently.
        if (self.interpolation, self.resize_mode) != ("bicubic", "shortest"):
            raise ValueError(
                f"unsupported preprocessing {self.interpolation}/{self.resize_mode}; "
                "only bicubic/shortest is implemented"
            )
        if self.image_size <= 0 or 0.0 in self.std:
            raise ValueError("image_size must be positive and std must not contain 0")


@dataclass(frozen=True)
class DecodedImage:
    # L (grayscale) or RGB, EXIF orientation applied, 8 bits per channel; smaller than the file
    # only when decode_image was asked to reduce it
    image: Image.Image
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


class ImageTooSmallError(ImageError):
    status_code = 422
    code = "image_too_small"


def decode_image(data: bytes, limits: ImageLimits, *, reduce_to: int | None = None) -> DecodedImage:
    """Untrusted bytes -> an 8-bit grayscale or RGB image upright, or an ImageError saying what
    is wrong. With `reduce_to` (the side the model's input is resized to), a JPEG at least twice
    that size is decoded smaller (see `_reduce_while_decoding`).

    The checks run cheapest first: size of the upload, then the header's dimensions, and only
    then the pixel data, so a bomb or an oversized file costs no decoding."""
    image = _open_checked(data, limits)
    fmt = str(image.format)
    if reduce_to is not None:
        _reduce_while_decoding(image, reduce_to)
    try:
        image.load()
    except Exception as exc:  # any decoder failure on untrusted bytes means a broken file
        raise CorruptImageError(f"The {fmt} image is truncated or corrupt.") from exc
    upright = _to_8bit(image)
    content_type, extension = FORMATS[fmt]
    return DecodedImage(upright, fmt, content_type, extension, upright.width, upright.height)


def _reduce_while_decoding(image: Image.Image, side: int) -> None:
    """A JPEG whose short side is at least twice `side` is decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg's DCT scaling, its short side still >= `side`, before the bicubic resize. The
    model then sees open_clip's transform of that smaller decode instead of the full one:
    embeddings differ by cosine >= 0.9999 with fp32 weights (random ones; int8's own error is
    larger), and decoding plus preprocessing costs 5-7.5 instead of 9-12 ms of CPU for a 1 MP
    radiograph and 44 instead of 235 ms (and 0.6 instead of 36 MB) for a 12 MP phone photo of
    one. Other formats have no such decoder shortcut and are decoded whole."""
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    scale = side / min(width, height)
    image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))


def identify_format(data: bytes, limits: ImageLimits) -> tuple[str, str]:
    """(content type, extension) from the header alone: for bytes whose pixels were already
    decoded once (an embedding-cache hit), the checks without the decoding."""
    fmt = str(_open_checked(data, limits).format)
    return FORMATS[fmt]


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise EmptyImageError("The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"The file is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes."
        )
    declared = _png_declared_size(data)
    if declared is not None:
        _check_dimensions(declared, limits)
    image = _open(data, limits)
    _check_dimensions(image.size, limits)
    return image


def _png_declared_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's size from its IHDR, read before Pillow: Pillow refuses a zero side as "not an
    image", and PNG (zlib) is the format a bomb is cheapest to build in."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Read only the header (Image.open is lazy), so a bomb is refused before it is decoded.

    Only the accepted formats' parsers are tried: the rest of Pillow's plugins (EPS with its
    Ghostscript call among them) never see untrusted bytes."""
    try:
        image = Image.open(io.BytesIO(data), formats=_PARSERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own backstop (the warning is raised only when warnings are errors).
        raise TooManyPixelsError(
            f"The image has more pixels than Pillow will decode; the limit is "
            f"{limits.max_pixels / 1e6:g} megapixels."
        ) from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise CorruptImageError("The image header is corrupt or truncated.") from exc
        raise UnsupportedImageError(f"The file is not a supported image: {ACCEPTED}.") from exc
    except Exception as exc:
        raise CorruptImageError("The image header is corrupt.") from exc
    if image.format not in FORMATS:
        raise UnsupportedImageError(f"{image.format} images are not accepted: {ACCEPTED}.")
    return image


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadDimensionsError(f"The image is {width}x{height} pixels: a side is empty.")
    if width * height > limits.max_pixels:
        raise TooManyPixelsError(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {limits.max_pixels / 1e6:g} megapixels."
        )
    if max(width, height) > limits.max_side:
        raise BadDimensionsError(
            f"The image is {width}x{height} pixels; no side may exceed {limits.max_side}."
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(
            f"The image is {width}x{height} pixels; nothing can be seen in a side shorter than "
            f"{limits.min_side} (RAIOX_MIN_IMAGE_SIDE)."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadDimensionsError(
            f"The image is {width}x{height} pixels: a strip that narrow is not a radiograph."
        )


def _to_8bit(image: Image.Image) -> Image.Image:
    """Windowing and alpha flattening come before convert("RGB"), which would clip 16-bit
    values and keep whatever colour hides under transparent pixels.

    Grayscale stays one channel (most radiographs): a third of the memory, and preprocessing
    resizes one plane instead of three to the same result."""
    mode = image.mode
    orientation = _orientation(image)
    try:
        if mode in _HIGH_BIT_DEPTH_MODES:
            image = window_to_8bit(np.asarray(image))
        elif mode in _ALPHA_MODES or "transparency" in image.info:
            image = _flatten_on_black(image)
        for transpose in _ORIENTATION.get(orientation, ()):
            image = image.transpose(transpose)
        return image if image.mode in ("L", "RGB") else image.convert("RGB")
    except Exception as exc:
        raise UnsupportedImageError(
            f"A {mode} image cannot be converted to RGB: {ACCEPTED}."
        ) from exc


def _orientation(image: Image.Image) -> int:
    """EXIF is metadata: a broken block must not reject pixels that decoded fine."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _flatten_on_black(image: Image.Image) -> Image.Image:
    """Transparent areas become black: a radiograph's background (unattenuated beam) is dark,
    so a white fill would draw a bright frame the model has never seen around an implant."""
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba)


def window_to_8bit(values: np.ndarray) -> Image.Image:
    """Map the bulk of a high-bit-depth image's values onto 0-255 (percentile window).

    Works in row chunks so a 60 MP 16-bit image costs its 8-bit result, not a float copy."""
    low, high = _window(values)
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, _WINDOW_CHUNK // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        chunk = np.nan_to_num(
            values[start : start + rows].astype(np.float32), nan=low, posinf=high, neginf=low
        )
        chunk -= low
        chunk *= scale
        np.clip(chunk, 0.0, 255.0, out=chunk)
        out[start : start + rows] = np.rint(chunk)
    return Image.fromarray(out)


def _window(values: np.ndarray) -> tuple[float, float]:
    """The percentile window of the finite values, from a regular grid sample of a big image;
    it falls back to min-max when most values are equal (a mostly-black image)."""
    step = max(1, math.ceil(math.sqrt(values.size / _WINDOW_SAMPLE)))
    sample = values[::step, ::step].ravel()
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(sample, WINDOW_PERCENTILES)
    if high <= low:
        low, high = sample.min(), sample.max()
    return float(low), float(high)


def preprocess(image: Image.Image, params: PreprocessParams) -> np.ndarray:
    """PIL image -> float32 [3, size, size], identical to open_clip's eval transform:
    BICUBIC resize of the short side (long side truncated, as torchvision does), center crop
    with a rounded offset, scale to [0, 1], normalize, all in float32.

    A grayscale image is resized as one plane and then normalized into three: Pillow resizes
    each channel alike, so this equals converting to RGB first, at a third of the work
    (1 MP: 3.1 instead of 7.6 ms)."""
    size = params.image_size
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
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
    # In place, into one output array: the arithmetic is the same float32 operations in the
    # same order (identical bits), but no ~600 KB temporaries are allocated and freed per
    # image, which measured 1.2 ms against 0.1 ms for this step.
    pixels = np.asarray(image, dtype=np.float32)
    pixels /= np.float32(255.0)
    planes = [pixels] * 3 if pixels.ndim == 2 else [pixels[..., c] for c in range(3)]
    mean = np.asarray(params.mean, dtype=np.float32)
    std = np.asarray(params.std, dtype=np.float32)
    out = np.empty((3, size, size), dtype=np.float32)
    for channel, plane in enumerate(planes):
        np.subtract(plane, mean[channel], out=out[channel])
        out[channel] /= std[channel]
    return out


def preprocess_batch(images: Sequence[Image.Image], params: PreprocessParams) -> np.ndarray:
    size = params.image_size
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = preprocess(image, params)
    return batch
