"""The SYNTHETIC demo catalog: 32 rendered implant "radiographs", 4 manufacturers x 8 designs.

No real reference radiographs are available to us, so demos and tests use these drawings. They
are not real products or radiographs and are labelled synthetic everywhere they show. Each
design differs visibly (taper, thread pitch and depth, apex, collar, length, diameter); views
of one design differ by small rotations, exposure and noise, as real reference shots would.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_NOTE = (
    "Synthetic demo rendering for demos and tests: not a real product and not a real radiograph."
)
MANUFACTURERS = ("Nobel Biocare", "Straumann", "Neodent", "Zimmer")
_LINES = ("Conical", "Tapered", "Parallel", "Hybrid")
WIDTH, HEIGHT = 384, 512
PX_PER_MM = 22.0


@dataclass(frozen=True)
class DemoImplant:
    key: str
    name: str
    manufacturer: str
    type: str
    platform: str
    diameter_mm: float
    length_mm: float
    taper: float  # apex width / collar width
    thread_pitch_mm: float
    thread_depth: float  # share of the radius
    apex: str  # flat | round | point
    collar_mm: float  # smooth collar height
    microthreads: bool


def _catalog() -> tuple[DemoImplant, ...]:
    implants = []
    for m, manufacturer in enumerate(MANUFACTURERS):
        for n in range(8):
            diameter = (3.3, 3.75, 4.1, 4.3, 4.8, 5.0, 3.5, 4.5)[(n + m) % 8]
            length = (8.0, 10.0, 11.5, 13.0, 15.0, 9.0, 12.0, 14.0)[(n * 3 + m) % 8]
            line = _LINES[(n + m) % 4]
            short = "".join(w[0] for w in manufacturer.split())
            implants.append(
                DemoImplant(
                    key=f"{manufacturer.split()[0].lower()}-{n + 1:02d}",
                    name=f"{short}-{line} {diameter} x {length} (demo {m * 8 + n + 1})",
                    manufacturer=manufacturer,
                    type=f"{line} (synthetic)",
                    platform=("NP", "RP", "WP")[n % 3],
                    diameter_mm=diameter,
                    length_mm=length,
                    taper=(0.55, 0.7, 1.0, 0.85)[(n + m) % 4],
                    thread_pitch_mm=(0.6, 0.8, 1.0, 1.25)[(n // 2 + m) % 4],
                    thread_depth=(0.12, 0.2, 0.28)[(n + 2 * m) % 3],
                    apex=("flat", "round", "point")[(n + m) % 3],
                    collar_mm=(0.5, 1.0, 1.8, 2.8)[(3 * n + m) % 4],
                    microthreads=(n + m) % 2 == 0,
                )
            )
    return tuple(implants)


DEMO_IMPLANTS = _catalog()


def _outline(implant: DemoImplant, cx: float, top: float) -> list[tuple[float, float]]:
    """Left and right profile of the implant body, threads included, clockwise."""
    radius = implant.diameter_mm * PX_PER_MM / 2
    length = implant.length_mm * PX_PER_MM
    collar = implant.collar_mm * PX_PER_MM
    pitch = implant.thread_pitch_mm * PX_PER_MM
    steps = int(length // 2)
    right = []
    for i in range(steps + 1):
        y = i * length / steps
        core = radius * (1 - (1 - implant.taper) * y / length)
        if y > collar:
            phase = ((y - collar) % pitch) / pitch
            tooth = implant.thread_depth * radius * (1 - abs(2 * phase - 1))
        elif implant.microthreads:
            tooth = 0.05 * radius * (1 - abs(2 * ((y % 4) / 4) - 1))
        else:
            tooth = 0.0
        if y > length * 0.85:  # apex shape on the last 15 %
            t = (y - length * 0.85) / (length * 0.15)
            core *= {
                "flat": 1.0,
                "round": float(np.sqrt(max(1 - t * t, 0.05))),
                "point": 1 - 0.8 * t,
            }[implant.apex]
            tooth *= 1 - t
        right.append((cx + core + tooth, top + y))
    left = [(2 * cx - x, y) for x, y in reversed(right)]
    return right + left


def _render(
    implant: DemoImplant, seed: int, rotation: float, exposure: float, clinical: bool
) -> Image.Image:
    rng = np.random.default_rng(seed)
    # bone-like background: low-frequency blobs plus a finer trabecular texture
    coarse = rng.normal(0, 1, (HEIGHT // 32, WIDTH // 32))
    fine = rng.normal(0, 1, (HEIGHT // 4, WIDTH // 4))
    bone = (
        70
        + 25
        * np.asarray(
            Image.fromarray(coarse.astype(np.float32)).resize(
                (WIDTH, HEIGHT), Image.Resampling.BICUBIC
            )
        )
        + 10
        * np.asarray(
            Image.fromarray(fine.astype(np.float32)).resize(
                (WIDTH, HEIGHT), Image.Resampling.BICUBIC
            )
        )
    )
    canvas = Image.fromarray(np.clip(bone, 0, 255).astype(np.uint8), "L")
    draw = ImageDraw.Draw(canvas)
    if clinical:  # neighbouring roots, as a dentist's periapical shot would show
        for side in (-1, 1):
            x = WIDTH / 2 + side * rng.uniform(120, 160)
            draw.ellipse((x - 35, 40, x + 35, HEIGHT - 60), fill=int(rng.uniform(110, 140)))
    cx, top = WIDTH / 2, 70.0
    radius = implant.diameter_mm * PX_PER_MM / 2
    draw.rectangle((cx - radius * 0.7, top - 45, cx + radius * 0.7, top), fill=200)  # abutment
    draw.polygon(_outline(implant, cx, top), fill=235)
    hole = radius * 0.35  # internal connection silhouette
    draw.rectangle(
        (cx - hole, top, cx + hole, top + (2.5 + implant.collar_mm) * PX_PER_MM / 2), fill=185
    )
    image = canvas.filter(ImageFilter.GaussianBlur(1.2)).rotate(
        rotation, Image.Resampling.BICUBIC, fillcolor=40
    )
    pixels = np.asarray(image, dtype=np.float32) * exposure + rng.normal(
        0, 4 if not clinical else 8, (HEIGHT, WIDTH)
    )
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def render_reference(implant: DemoImplant, view: int = 0) -> Image.Image:
    """View 0 is the canonical shot; later views tilt a few degrees and change exposure."""
    index = DEMO_IMPLANTS.index(implant)
    if view == 0:
        return _render(implant, seed=index * 100, rotation=0.0, exposure=1.0, clinical=False)
    rng = np.random.default_rng(index * 100 + view)
    return _render(
        implant,
        seed=index * 100 + view,
        rotation=float(rng.uniform(-6, 6)),
        exposure=float(rng.uniform(0.85, 1.15)),
        clinical=False,
    )


def render_patient_sample(implant: DemoImplant, seed: int) -> Image.Image:
    """A "clinical" radiograph of the implant: other bone, neighbouring roots, tilt, noise."""
    rng = np.random.default_rng(10_000 + seed)
    return _render(
        implant,
        seed=10_000 + seed,
        rotation=float(rng.uniform(-8, 8)),
        exposure=float(rng.uniform(0.8, 1.2)),
        clinical=True,
    )


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()
