"""Image decoding and CLIP preprocessing: parity with open_clip, 16-bit windowing, EXIF
orientation, and a typed 4xx error for every kind of bad upload (fuzzed)."""

from __future__ import annotations

import io
import logging
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from appliance.errors import AppError
from appliance.identification.identify import decode_then_preprocess
from appliance.identification.imaging import (
    BadDimensionsError,
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    PreprocessParams,
    TooManyPixelsError,
    UnsupportedImageError,
    decode_image,
    preprocess,
    preprocess_batch,
    window_to_8bit,
)
from appliance.settings import ImageLimits

# Decoding is tested on small images; the minimum side has tests of its own.
LIMITS = ImageLimits(min_side=1)
PARAMS = PreprocessParams()


# ---------------------------------------------------------------- image generators


def radiograph(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [h, w, 3]: a dark gradient, a bright 'implant' bar and noise, so that resampling
    differences cannot hide in flat areas."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 40 + 60 * (x / max(1, width - 1)) + 30 * (y / max(1, height - 1))
    base[height // 4 : 3 * height // 4 + 1, 2 * width // 5 : 3 * width // 5 + 1] = 230
    rgb = base[..., None] + rng.normal(0, 12, (height, width, 3))
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(radiograph(width, height, seed))


def gray16(width: int, height: int, low: int = 1000, high: int = 3000) -> Image.Image:
    """A 12-bit-style radiograph in a 16-bit container: values only in [low, high]."""
    gray = radiograph(width, height)[..., 0].astype(np.float64) / 255
    return Image.fromarray((low + gray * (high - low)).astype(np.uint16))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_with_header(width: int, height: int, idat: bytes = b"", bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR claims any size (Pillow cannot save 0xN or 30000x30000 cheaply)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int = 30_000) -> bytes:
    """A real bomb: a 1-bit PNG of side x side zeros, ~100 KB on disk, ~112 MB of raw rows
    (900 MB once converted to RGB); compressed row block by row block to stay light."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim another size."""
    data = bytearray(encode(rgb_image(32, 24), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def with_alpha(mode: str) -> Image.Image:
    """Left half opaque, right half fully transparent over white pixels."""
    rgb = rgb_image(40, 30)
    alpha = np.full((30, 40), 255, dtype=np.uint8)
    alpha[:, 20:] = 0
    white = np.asarray(rgb).copy()
    white[:, 20:] = 255
    rgba = Image.fromarray(white)
    rgba.putalpha(Image.fromarray(alpha))
    return rgba if mode == "RGBA" else rgba.convert(mode)


def cmyk_image(width: int, height: int) -> Image.Image:
    inverted = 255 - radiograph(width, height)
    cmyk = np.concatenate([inverted, np.zeros((height, width, 1), np.uint8)], axis=2)
    return Image.frombytes("CMYK", (width, height), cmyk.tobytes())


def float_tiff() -> bytes:
    values = np.asarray(gray16(50, 40), dtype=np.float32) / 7.0
    values[0, :5] = np.nan
    values[1, :5] = np.inf
    return encode(Image.fromarray(values), "TIFF")


# ---------------------------------------------------------------- the reference transform


@pytest.fixture(scope="module")
def clip_transform() -> Callable[[Image.Image], Any]:
    """The eval transform open_clip builds for ViT-B-32 itself, not a re-creation of it."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip is in the [export] extra")
    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded" is expected
    _, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return transform  # type: ignore[no-any-return]


def reference(transform: Callable[[Image.Image], Any], image: Image.Image) -> np.ndarray:
    return transform(image).numpy()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- preprocessing parity

SIZES = [
    (10, 7),
    (7, 10),
    (1, 1),
    (224, 224),
    (225, 224),
    (224, 225),
    (227, 224),
    (224, 231),
    (223, 301),
    (301, 223),
    (333, 500),
    (500, 333),
    (639, 479),
    (1001, 1003),
    (2000, 101),
    (4000, 3000),
]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_preprocess_equals_open_clip_exactly(
    clip_transform: Callable[[Image.Image], Any], width: int, height: int, mode: str
) -> None:
    """Grayscale takes its own one-plane path; it must still match open_clip bit for bit."""
    image = rgb_image(width, height, seed=width * 7 + height).convert(mode)
    ours = preprocess(image, PARAMS)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, reference(clip_transform, image))


def test_preprocess_batch_stacks_single_results() -> None:
    images = [rgb_image(300, 200, seed=1), rgb_image(120, 310, seed=2), rgb_image(224, 224)]
    batch = preprocess_batch(images, PARAMS)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for row, image in zip(batch, images, strict=True):
        np.testing.assert_array_equal(row, preprocess(image, PARAMS))
    assert preprocess_batch([], PARAMS).shape == (0, 3, 224, 224)


def test_preprocess_accepts_a_non_rgb_image(clip_transform: Callable[[Image.Image], Any]) -> None:
    gray = rgb_image(300, 260).convert("L")
    np.testing.assert_array_equal(preprocess(gray, PARAMS), reference(clip_transform, gray))


def test_preprocess_params_refuse_what_is_not_implemented() -> None:
    with pytest.raises(ValueError, match="bilinear"):
        PreprocessParams(interpolation="bilinear")
    with pytest.raises(ValueError, match="squash"):
        PreprocessParams(resize_mode="squash")
    with pytest.raises(ValueError, match="positive"):
        PreprocessParams(image_size=0)


# ---------------------------------------------------------------- formats through decode_image

FORMAT_CASES: dict[str, tuple[Callable[[], bytes], str, str, str]] = {
    "rgb-jpeg": (
        lambda: encode(rgb_image(640, 480), "JPEG", quality=92),
        "JPEG",
        "image/jpeg",
        ".jpg",
    ),
    "rgb-jpeg-12mp": (lambda: encode(rgb_image(4000, 3000), "JPEG"), "JPEG", "image/jpeg", ".jpg"),
    "gray-jpeg": (
        lambda: encode(rgb_image(300, 500).convert("L"), "JPEG"),
        "JPEG",
        "image/jpeg",
        ".jpg",
    ),
    "cmyk-jpeg": (lambda: encode(cmyk_image(320, 240), "JPEG"), "JPEG", "image/jpeg", ".jpg"),
    "mpo-two-frames": (
        lambda: encode(rgb_image(320, 240), "MPO", save_all=True, append_images=[rgb_image(9, 9)]),
        "MPO",
        "image/jpeg",
        ".jpg",
    ),
    "rgb-png": (lambda: encode(rgb_image(301, 223), "PNG"), "PNG", "image/png", ".png"),
    "gray-png": (lambda: encode(rgb_image(10, 7).convert("L"), "PNG"), "PNG", "image/png", ".png"),
    "1bit-png": (
        lambda: encode(rgb_image(230, 250).convert("1"), "PNG"),
        "PNG",
        "image/png",
        ".png",
    ),
    "rgba-png": (lambda: encode(with_alpha("RGBA"), "PNG"), "PNG", "image/png", ".png"),
    "la-png": (lambda: encode(with_alpha("LA"), "PNG"), "PNG", "image/png", ".png"),
    "palette-png": (
        lambda: encode(rgb_image(260, 200).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "PNG",
        "image/png",
        ".png",
    ),
    "palette-png-transparent": (
        lambda: encode(
            rgb_image(260, 200).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0
        ),
        "PNG",
        "image/png",
        ".png",
    ),
    "16bit-png": (lambda: encode(gray16(400, 300), "PNG"), "PNG", "image/png", ".png"),
    "16bit-tiff": (lambda: encode(gray16(300, 400), "TIFF"), "TIFF", "image/tiff", ".tif"),
    "float-tiff": (float_tiff, "TIFF", "image/tiff", ".tif"),
    "rgb-tiff-lzw": (
        lambda: encode(rgb_image(250, 240), "TIFF", compression="tiff_lzw"),
        "TIFF",
        "image/tiff",
        ".tif",
    ),
    "bmp": (lambda: encode(rgb_image(225, 224), "BMP"), "BMP", "image/bmp", ".bmp"),
    "webp-lossy": (lambda: encode(rgb_image(500, 333), "WEBP"), "WEBP", "image/webp", ".webp"),
    "webp-lossless": (
        lambda: encode(rgb_image(333, 500), "WEBP", lossless=True),
        "WEBP",
        "image/webp",
        ".webp",
    ),
}


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_every_accepted_format_decodes_to_8_bits_and_preprocesses_like_open_clip(
    clip_transform: Callable[[Image.Image], Any], case: str
) -> None:
    build, fmt, content_type, extension = FORMAT_CASES[case]
    data = build()
    decoded = decode_image(data, LIMITS)
    original = Image.open(io.BytesIO(data))
    assert isinstance(decoded, DecodedImage)
    grayscale = original.mode == "L" or original.mode.startswith(("I", "F"))  # 16-bit, float
    assert decoded.image.mode == ("L" if grayscale else "RGB")
    assert (decoded.width, decoded.height) == decoded.image.size == original.size
    assert (decoded.format, decoded.content_type, decoded.extension) == (
        fmt,
        content_type,
        extension,
    )
    pixels = np.asarray(decoded.image)
    assert pixels.max() > pixels.min(), "the image kept its content"
    np.testing.assert_array_equal(
        preprocess(decoded.image, PARAMS), reference(clip_transform, decoded.image)
    )


@pytest.mark.parametrize("case", ["rgb-jpeg", "gray-jpeg", "rgb-png", "gray-png", "bmp"])
def test_plain_images_reach_the_model_as_open_clip_would_see_the_file(
    clip_transform: Callable[[Image.Image], Any], case: str
) -> None:
    """For 8-bit images without alpha or rotation decode_image adds no policy of its own."""
    data = FORMAT_CASES[case][0]()
    np.testing.assert_array_equal(
        preprocess(decode_image(data, LIMITS).image, PARAMS),
        reference(clip_transform, Image.open(io.BytesIO(data))),
    )


# ---------------------------------------------------------------- 16-bit windowing


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_radiograph_is_windowed_not_clipped(fmt: str) -> None:
    source = gray16(400, 300, low=1000, high=3000)
    assert source.mode == "I;16"
    clipped = np.asarray(source.convert("RGB"))
    assert np.unique(clipped).size == 1, "what convert('RGB') alone would give: one flat level"

    decoded = decode_image(encode(source, fmt), LIMITS)
    assert decoded.image.mode == "L"
    pixels = np.asarray(decoded.image)
    assert pixels.min() <= 5 and pixels.max() >= 250
    assert np.unique(pixels).size > 150
    # Windowing keeps the order of values: the bright implant stays brighter than the bone.
    assert pixels[150, 200] > pixels[150, 20]


def test_constant_and_empty_windows_do_not_divide_by_zero() -> None:
    flat = decode_image(encode(Image.fromarray(np.full((30, 40), 1234, np.uint16)), "PNG"), LIMITS)
    assert np.unique(np.asarray(flat.image)).size == 1
    nan = window_to_8bit(np.full((20, 30), np.nan, dtype=np.float32))
    assert nan.mode == "L" and np.asarray(nan).max() == 0


def test_mostly_black_16_bit_image_keeps_its_few_bright_pixels() -> None:
    values = np.zeros((200, 200), np.uint16)
    values[100:102, 100:102] = 4000  # 0.01 %: inside the top percentile, so min-max is used
    pixels = np.asarray(decode_image(encode(Image.fromarray(values), "PNG"), LIMITS).image)
    assert pixels[100, 100] == 255 and pixels[0, 0] == 0


def test_window_of_a_big_image_is_sampled_without_losing_the_range() -> None:
    gradient = np.tile(np.linspace(500, 4500, 2300).astype(np.uint16), (2300, 1))  # 5.3 MP
    pixels = np.asarray(window_to_8bit(gradient))
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255
    assert abs(int(pixels[0, 1150]) - 128) <= 2
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)


def test_float_tiff_with_nan_and_inf_decodes() -> None:
    pixels = np.asarray(decode_image(float_tiff(), LIMITS).image)
    assert pixels[0, 0] == 0 and pixels[1, 0] == 255
    assert np.unique(pixels).size > 150


# ---------------------------------------------------- JPEGs decoded smaller for the model


@pytest.mark.parametrize(
    ("width", "height", "fmt", "expected"),
    [
        (4000, 3000, "JPEG", (500, 375)),  # 1/8: a phone photo
        (1152, 864, "JPEG", (576, 432)),  # 1/2: a sensor radiograph
        (640, 480, "JPEG", (320, 240)),
        (600, 447, "JPEG", (600, 447)),  # short side under twice 224: decoded whole
        (4000, 3000, "MPO", (500, 375)),
        (1500, 1000, "PNG", (1500, 1000)),  # no decoder shortcut
        (1500, 1000, "WEBP", (1500, 1000)),
    ],
)
def test_large_jpegs_are_decoded_smaller_but_never_below_the_models_side(
    width: int, height: int, fmt: str, expected: tuple[int, int]
) -> None:
    data = encode(rgb_image(width, height), fmt)
    decoded = decode_image(data, LIMITS, reduce_to=PARAMS.image_size)
    assert decoded.image.size == (decoded.width, decoded.height) == expected
    assert min(expected) >= PARAMS.image_size
    assert decode_image(data, LIMITS).image.size == (width, height)  # only when asked


def test_the_model_path_decodes_smaller_and_stays_close_to_the_full_decode() -> None:
    data = encode(rgb_image(1152, 864, seed=3).convert("L"), "JPEG", quality=90)
    served = decode_then_preprocess(data, LIMITS, PARAMS)
    reduced = decode_image(data, LIMITS, reduce_to=PARAMS.image_size).image
    np.testing.assert_array_equal(served, preprocess(reduced, PARAMS))
    full = preprocess(decode_image(data, LIMITS).image, PARAMS)
    difference = np.abs(served - full)
    # not the same pixels, but within a few grey levels (1/255 is ~0.015 here)
    assert 0 < difference.mean() < 0.01 and difference.max() < 0.1


def test_a_reduced_jpeg_is_still_turned_upright() -> None:
    array = np.zeros((900, 1200, 3), np.uint8)
    array[:100, :100] = 255  # a white mark in the stored top-left corner
    data = encode(Image.fromarray(array), "JPEG", quality=95, exif=exif_orientation(6))
    decoded = decode_image(data, LIMITS, reduce_to=PARAMS.image_size)
    assert decoded.image.size == (225, 300)  # 1/4 of 1200x900, then rotated
    pixels = np.asarray(decoded.image)[..., 0]
    assert pixels[:20, -20:].min() > 200 and pixels[:20, :20].max() < 50


# ---------------------------------------------------------------- orientation and alpha


def test_jpeg_with_orientation_6_comes_out_rotated() -> None:
    array = np.zeros((40, 60, 3), np.uint8)
    array[:10, :10] = 255  # a white mark in the stored top-left corner
    data = encode(Image.fromarray(array), "JPEG", quality=95, exif=exif_orientation(6))
    decoded = decode_image(data, LIMITS)
    assert (decoded.width, decoded.height) == (40, 60)
    pixels = np.asarray(decoded.image)[..., 0]
    # Orientation 6 means "rotate 90 degrees clockwise to display": the mark is now top-right.
    assert pixels[:8, -8:].min() > 200 and pixels[:8, :8].max() < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    data = encode(rgb_image(50, 30), "PNG", exif=exif_orientation(orientation))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data, LIMITS).image), np.asarray(expected))


def test_16_bit_png_orientation_is_applied_after_windowing() -> None:
    data = encode(gray16(60, 40), "PNG", exif=exif_orientation(8))
    decoded = decode_image(data, LIMITS)
    assert (decoded.width, decoded.height) == (40, 60)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_is_ignored_not_fatal() -> None:
    data = encode(rgb_image(60, 40), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff")
    assert decode_image(data, LIMITS).image.size == (60, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_areas_are_flattened_onto_black(mode: str) -> None:
    pixels = np.asarray(decode_image(encode(with_alpha(mode), "PNG"), LIMITS).image)
    assert pixels[:, 20:].max() == 0, "transparent white became black"
    assert pixels[:, :20].mean() > 40, "opaque pixels kept"


def test_palette_transparency_is_flattened_onto_black() -> None:
    image = Image.new("P", (20, 10), 1)
    image.putpalette([255, 255, 255] * 2)
    image.paste(0, (0, 0, 10, 10))
    pixels = np.asarray(decode_image(encode(image, "PNG", transparency=0), LIMITS).image)
    assert pixels[:, :10].max() == 0 and pixels[:, 10:].min() == 255


# ---------------------------------------------------------------- every bad input, typed

BAD_INPUTS: dict[str, tuple[Callable[[], bytes], type[ImageError], int, str]] = {
    "empty": (lambda: b"", EmptyImageError, 400, "empty_image"),
    "text": (
        lambda: b"hello, this is not an image\n" * 3,
        UnsupportedImageError,
        415,
        "unsupported_image_type",
    ),
    "pdf": (
        lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        UnsupportedImageError,
        415,
        "unsupported_image_type",
    ),
    "eps": (
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        UnsupportedImageError,
        415,
        "unsupported_image_type",
    ),
    "gif": (
        lambda: encode(rgb_image(40, 30), "GIF"),
        UnsupportedImageError,
        415,
        "unsupported_image_type",
    ),
    "truncated-jpeg": (
        lambda: FORMAT_CASES["rgb-jpeg"][0]()[:20_000],
        CorruptImageError,
        400,
        "corrupt_image",
    ),
    "truncated-png": (
        lambda: FORMAT_CASES["rgb-png"][0]()[:60_000],
        CorruptImageError,
        400,
        "corrupt_image",
    ),
    "png-signature-only": (
        lambda: FORMAT_CASES["rgb-png"][0]()[:20],
        CorruptImageError,
        400,
        "corrupt_image",
    ),
    "corrupt-png-data": (
        lambda: png_with_header(64, 64, idat=b"not zlib at all"),
        CorruptImageError,
        400,
        "corrupt_image",
    ),
    "png-bomb-30000": (png_bomb, TooManyPixelsError, 413, "too_many_pixels"),
    "png-header-9000": (
        lambda: png_with_header(9000, 9000),
        TooManyPixelsError,
        413,
        "too_many_pixels",
    ),
    "jpeg-claiming-30000": (
        lambda: jpeg_claiming(30_000, 30_000),
        TooManyPixelsError,
        413,
        "too_many_pixels",
    ),
    "jpeg-claiming-9000": (
        lambda: jpeg_claiming(9000, 9000),
        TooManyPixelsError,
        413,
        "too_many_pixels",
    ),
    "png-0-wide": (lambda: png_with_header(0, 100), BadDimensionsError, 422, "bad_dimensions"),
    "png-0-high": (lambda: png_with_header(100, 0), BadDimensionsError, 422, "bad_dimensions"),
    "side-too-long": (
        lambda: png_with_header(17_000, 1000),
        BadDimensionsError,
        422,
        "bad_dimensions",
    ),
    "strip": (
        lambda: encode(rgb_image(2100, 100), "PNG"),
        BadDimensionsError,
        422,
        "bad_dimensions",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_raises_its_own_typed_error(case: str) -> None:
    build, error, status, code = BAD_INPUTS[case]
    with pytest.raises(error) as info:
        decode_image(build(), LIMITS)
    assert isinstance(info.value, AppError)
    assert (info.value.status_code, info.value.code) == (status, code)
    assert info.value.detail[0].isupper() and info.value.detail.endswith(".")


def test_bomb_message_names_the_size_and_the_limit() -> None:
    with pytest.raises(TooManyPixelsError, match=r"30000x30000 pixels .*limit is 60 megapixels"):
        decode_image(png_bomb(), LIMITS)


def test_byte_limit_is_checked_before_decoding() -> None:
    limits = ImageLimits(max_bytes=1000, min_side=1)
    with pytest.raises(ImageTooLargeError, match="1,001 bytes"):
        decode_image(b"\0" * 1001, limits)  # not even an image: the size is refused first
    assert decode_image(encode(rgb_image(10, 7), "PNG"), limits).width == 10


def test_limits_are_configurable() -> None:
    data = encode(rgb_image(300, 200), "PNG")
    with pytest.raises(TooManyPixelsError):
        decode_image(data, ImageLimits(max_pixels=50_000))
    with pytest.raises(BadDimensionsError):
        decode_image(data, ImageLimits(max_side=299))
    assert decode_image(data, ImageLimits(max_pixels=60_000, max_side=300)).width == 300


# ---------------------------------------------------------------- fuzz


def fuzz_cases(count: int, seed: int) -> list[bytes]:
    """Random bytes, random bytes behind real signatures, and real files mutated."""
    rng = random.Random(seed)
    seeds = [
        encode(rgb_image(48, 32), "JPEG"),
        encode(rgb_image(48, 32), "PNG"),
        encode(gray16(40, 30), "PNG"),
        encode(rgb_image(40, 30), "TIFF"),
        encode(gray16(40, 30), "TIFF", compression="tiff_deflate"),
        encode(rgb_image(40, 30), "BMP"),
        encode(rgb_image(40, 30), "WEBP"),
        encode(with_alpha("RGBA"), "PNG"),
        encode(cmyk_image(40, 30), "JPEG", exif=exif_orientation(6)),
    ]
    prefixes = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM"]
    cases = []
    for n in range(count):
        if n % 3 == 0:
            noise = rng.randbytes(rng.randint(1, 400))
            cases.append(rng.choice(prefixes) + noise)
            continue
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[position] = rng.randrange(256)
            elif action < 0.8:
                del data[position : position + rng.randint(1, 64)]
            else:
                data[position:position] = rng.randbytes(rng.randint(1, 16))
        if rng.random() < 0.2:
            data = data[: rng.randrange(1, len(data) + 1)]
        cases.append(bytes(data))
    return cases


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken EXIF it skips
def test_fuzzed_inputs_raise_only_image_errors() -> None:
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000, max_side=4096, min_side=1)
    outcomes: dict[str, int] = {}
    for data in fuzz_cases(400, seed=20240611):
        try:
            decoded = decode_image(data, limits)
        except ImageError as exc:
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
        else:
            assert decoded.image.mode in ("L", "RGB")
            assert decoded.image.size == (decoded.width, decoded.height)
            preprocess(decoded.image, PARAMS)
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
    # The fuzz reached the decoders, not only the format sniffing.
    assert outcomes.get("decoded", 0) > 20 and outcomes.get("corrupt_image", 0) > 20
    assert outcomes.get("unsupported_image_type", 0) >= 10
