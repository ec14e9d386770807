"""Parity of the int8 graph against the fp32 one on a fixed, varied set of synthetic images.

The set is generated from a seed so that every build, test and benchmark measures the same
thing without shipping image files, and it mixes the kinds of content the model will see
(smooth gradients, hard-edged shapes, noise, radiograph-like grayscale blobs) at several
sizes and aspect ratios so the resize-and-crop path is exercised as well.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from appliance.identification.manifest import Parity

PARITY_IMAGES = 64
PARITY_SEED = 1234

_SIZES = ((224, 224), (320, 240), (240, 320), (512, 384), (173, 301), (640, 480), (96, 128))


def synthetic_images(count: int = PARITY_IMAGES, seed: int = PARITY_SEED) -> list[Image.Image]:
    """Deterministic RGB images of four kinds, cycled so every kind is well represented."""
    rng = np.random.default_rng(seed)
    makers = (_gradient, _shapes, _noise, _radiograph)
    images = []
    for i in range(count):
        width, height = _SIZES[int(rng.integers(len(_SIZES)))]
        images.append(makers[i % len(makers)](rng, width, height))
    return images


def _gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
    channels = [
        np.sin(ramp * rng.uniform(1, 8) + rng.uniform(0, 2 * np.pi)) * 0.5 + 0.5 for _ in range(3)
    ]
    return Image.fromarray((np.stack(channels, axis=-1) * 255).astype(np.uint8), "RGB")


def _shapes(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        box = (x0, y0, x1 + 1, y1 + 1)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle(box, fill=_colour(rng))
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        else:
            draw.line(box, fill=_colour(rng), width=int(rng.integers(1, 8)))
    return image


def _noise(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    scale = int(rng.integers(1, 16))
    small = rng.integers(0, 256, (max(1, height // scale), max(1, width // scale), 3))
    image = Image.fromarray(small.astype(np.uint8), "RGB")
    return image.resize((width, height), Image.Resampling.NEAREST)


def _radiograph(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A dark field with a bright, threaded, screw-like body and soft bone-like haze."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.full((height, width), rng.uniform(10, 60), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        sigma = rng.uniform(0.1, 0.4) * min(width, height)
        field += rng.uniform(30, 90) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    cx, half = rng.uniform(0.3, 0.7) * width, rng.uniform(0.06, 0.15) * width
    top, bottom = rng.uniform(0.05, 0.3) * height, rng.uniform(0.6, 0.95) * height
    pitch = rng.uniform(4, 14)
    threads = half * (1 + 0.15 * np.sign(np.sin(2 * np.pi * y / pitch)))
    body = (np.abs(x - cx) < threads) & (y > top) & (y < bottom)
    field[body] = rng.uniform(200, 250)
    field += rng.normal(0, rng.uniform(2, 10), field.shape)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "L")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5))).convert("RGB")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in rng.integers(0, 256, 3))
    return red, green, blue


def parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Compare two [n, d] sets of unit vectors computed from the same n images."""
    cosines = np.sum(reference * candidate, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )
    agree = np.mean(_nearest_other(reference) == _nearest_other(candidate))
    return Parity(
        cosine_mean=float(np.mean(cosines)),
        cosine_min=float(np.min(cosines)),
        nn_agreement=float(agree),
        images=int(reference.shape[0]),
    )


def _nearest_other(vectors: np.ndarray) -> np.ndarray:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest: np.ndarray = np.argmax(similarity, axis=1)
    return nearest
