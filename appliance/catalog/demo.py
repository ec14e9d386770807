"""The SYNTHETIC demo catalog: 32 rendered implant "radiographs", 4 manufacturers x 8 designs.

No real reference radiographs are available to us, so demos and tests use these drawings. They
are not real products or radiographs and are labelled synthetic wherever they show. Each design
differs visibly (body taper, thread pitch, depth and shape, apex, collar, neck, connection,
length, diameter), so a good image model can tell them apart. Reference views of one design
share a bone phantom per view number across the catalog, so that what tells references apart
is the implant, not the background.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_NOTE = (
    "Synthetic rendering for demos and tests: not a real product and not a real radiograph."
)
WIDTH, HEIGHT = 384, 512
PX_PER_MM = 21.0
PLATFORM_Y = 150  # canonical row of the implant's platform, px

Polygon = np.ndarray  # (n, 2) points in mm: x across the implant axis, y down from the platform


@dataclass(frozen=True)
class DemoImplant:
    """One synthetic design; the fields after length_mm are what the renderer draws."""

    key: str
    name: str
    manufacturer: str
    type: str
    platform: str
    diameter_mm: float
    length_mm: float
    body: str  # parallel | tapered | hybrid (parallel, then tapered)
    apex_ratio: float  # core width at the apex / core width below the collar
    thread_pitch_mm: float
    thread_depth_mm: float
    thread_shape: str  # v | buttress | reverse | square | rounded
    apex: str  # flat | rounded | pointed | hole | chamber
    collar_mm: float  # unthreaded neck height
    microthreads: bool
    neck: str  # straight | flared | back-taper
    connection: str  # conical | morse | internal-hex | external-hex | octagon | trilobe


# line: name, type, body, apex_ratio, pitch, depth, thread, apex, collar, micro, neck, connection
_LINES: dict[str, tuple[str, str, str, float, float, float, str, str, float, bool, str, str]] = {
    "NCT": ("NB Conical Tapered", "tapered, conical connection", "tapered", 0.45, 1.2, 0.6,
            "reverse", "pointed", 0.9, False, "back-taper", "conical"),
    "NTC": ("NB Trilobe Tapered", "tapered, trilobe connection", "tapered", 0.7, 0.8, 0.3,
            "v", "rounded", 1.5, False, "straight", "trilobe"),
    "NEH": ("NB External Hex", "parallel, external hex", "parallel", 0.85, 0.6, 0.3,
            "v", "hole", 0.8, False, "straight", "external-hex"),
    "NCP": ("NB Conical Parallel", "parallel, conical connection", "parallel", 0.8, 0.9, 0.4,
            "buttress", "rounded", 0.5, True, "straight", "conical"),
    "STS": ("ST Tissue-Level 2.8", "tissue level, 2.8 mm neck", "parallel", 0.85, 1.25, 0.35,
            "rounded", "rounded", 2.8, False, "flared", "octagon"),
    "STP": ("ST Tissue-Level 1.8", "tissue level, 1.8 mm neck", "parallel", 0.75, 1.0, 0.4,
            "rounded", "flat", 1.8, False, "flared", "octagon"),
    "SBT": ("ST Bone-Level Tapered", "bone level, tapered", "tapered", 0.6, 0.8, 0.35,
            "v", "flat", 0.4, False, "straight", "conical"),
    "SBX": ("ST Bone-Level Deep", "bone level, deep threads", "hybrid", 0.45, 1.6, 0.7,
            "buttress", "rounded", 0.3, False, "straight", "conical"),
    "DMT": ("ND Morse Tapered", "tapered, Morse taper", "tapered", 0.5, 1.1, 0.55,
            "square", "pointed", 0.6, False, "straight", "morse"),
    "DMP": ("ND Morse Parallel", "parallel, Morse taper", "parallel", 0.9, 0.8, 0.3,
            "v", "chamber", 0.4, False, "straight", "morse"),
    "DEH": ("ND External Hex", "parallel, external hex", "parallel", 0.85, 0.7, 0.35,
            "rounded", "flat", 0.6, True, "straight", "external-hex"),
    "DHX": ("ND Hybrid Deep", "hybrid body, deep threads", "hybrid", 0.45, 1.4, 0.65,
            "buttress", "rounded", 0.5, True, "back-taper", "morse"),
    "ZTS": ("ZM Tapered Hex", "tapered, internal hex", "tapered", 0.7, 0.6, 0.3,
            "v", "chamber", 0.5, True, "straight", "internal-hex"),
    "ZPS": ("ZM Parallel Hex", "parallel, internal hex", "parallel", 0.85, 0.6, 0.25,
            "square", "hole", 1.0, False, "straight", "internal-hex"),
    "ZNC": ("ZM Narrow Conical", "narrow, conical connection", "tapered", 0.75, 0.7, 0.3,
            "rounded", "rounded", 1.2, True, "back-taper", "conical"),
    "ZTP": ("ZM Flared Hybrid", "hybrid, flared neck", "hybrid", 0.6, 1.0, 0.45,
            "reverse", "flat", 1.8, False, "flared", "internal-hex"),
}  # fmt: skip

# per manufacturer, 8 rows of line, platform, diameter, length
_ROWS: dict[str, tuple[tuple[str, str, float, float], ...]] = {
    "Nobel Biocare": (("NCT", "NP", 3.5, 11.5), ("NCT", "RP", 4.3, 13), ("NCT", "WP", 5.0, 10),
                      ("NTC", "RP", 4.3, 10), ("NTC", "WP", 5.0, 13), ("NEH", "RP", 3.75, 15),
                      ("NEH", "WP", 5.0, 8.5), ("NCP", "RP", 4.3, 11.5)),
    "Straumann": (("STS", "RN", 4.1, 10), ("STS", "WN", 4.8, 12), ("STP", "RN", 4.1, 8),
                  ("STP", "NN", 3.3, 12), ("SBT", "NC", 3.3, 10), ("SBT", "RC", 4.1, 14),
                  ("SBX", "RB", 4.5, 12), ("SBX", "WB", 5.5, 10)),
    "Neodent": (("DMT", "CM", 3.5, 13), ("DMT", "CM", 4.3, 10), ("DMT", "CM", 5.0, 11.5),
                ("DMP", "CM", 3.75, 11), ("DMP", "CM", 4.0, 9), ("DEH", "HE", 3.75, 13),
                ("DEH", "HE", 5.0, 7), ("DHX", "GM", 4.3, 16)),
    "Zimmer": (("ZTS", "3.5", 3.7, 10), ("ZTS", "4.5", 4.7, 13), ("ZTS", "5.7", 6.0, 8),
               ("ZPS", "3.5", 3.7, 16), ("ZPS", "4.5", 4.7, 10), ("ZNC", "3.1", 3.1, 11.5),
               ("ZNC", "3.1", 3.1, 9), ("ZTP", "3.5", 4.1, 11.5)),
}  # fmt: skip


def _catalog() -> tuple[DemoImplant, ...]:
    implants = []
    for manufacturer, rows in _ROWS.items():
        for n, (line, platform, diameter, length) in enumerate(rows, start=1):
            name, kind = _LINES[line][:2]
            key = f"{manufacturer.split()[0].lower()}-{n:02d}"
            label = f"{name} {diameter:g} \N{MULTIPLICATION SIGN} {length:g} (demo)"
            implants.append(
                DemoImplant(
                    key, label, manufacturer, f"{kind} (synthetic)", platform, diameter, length,
                    *_LINES[line][2:],
                )
            )  # fmt: skip
    return tuple(implants)


DEMO_IMPLANTS = _catalog()


def _thread(shape: str, phase: np.ndarray) -> np.ndarray:
    """Thread height (0..1) across one pitch, as the profile shows it."""
    height: np.ndarray
    if shape == "v":
        height = 1 - np.abs(2 * phase - 1)
    elif shape == "buttress":  # flat coronal flank
        height = np.clip(1.2 * (1 - phase) - 0.2, 0, 1)
    elif shape == "reverse":  # flat apical flank
        height = np.clip(1.2 * phase - 0.2, 0, 1)
    elif shape == "square":
        height = np.clip((0.3 - np.abs(phase - 0.5)) / 0.1, 0, 1)
    else:  # rounded
        height = 0.5 - 0.5 * np.cos(2 * np.pi * phase)
    return height


def _radius(imp: DemoImplant, y: np.ndarray, phase_shift: float) -> np.ndarray:
    """Outer radius (mm) at depth y; the helix puts one side's threads half a pitch lower."""
    length, outer, collar = imp.length_mm, imp.diameter_mm / 2, imp.collar_mm
    start = {"parallel": 0.8 * length, "tapered": collar, "hybrid": 0.45 * length}[imp.body]
    taper = np.clip((y - start) / (length - start), 0, 1)
    core = (outer - imp.thread_depth_mm) * (1 - (1 - imp.apex_ratio) * taper)
    turns = (y - collar) / imp.thread_pitch_mm
    threads = imp.thread_depth_mm * _thread(imp.thread_shape, (turns + phase_shift) % 1)
    threads *= np.clip(turns, 0, 1)  # run-in
    apex_len = 2.2 if imp.apex in ("pointed", "rounded", "hole") else 0.4
    t = np.clip((y - length + apex_len) / apex_len, 0, 1)
    if imp.apex == "pointed":  # self-tapping: the threads run out onto the tip
        core, threads = core * (1 - 0.8 * t), threads * (1 - 0.6 * t)
    else:
        rounded = np.sqrt(1 - 0.9 * t**2) if imp.apex in ("rounded", "hole") else 1 - 0.2 * t
        core, threads = core * rounded, threads * (1 - t)
    u = np.clip(y / max(collar, 1e-6), 0, 1)
    neck = outer + {"straight": 0.0, "flared": 0.45, "back-taper": -0.3}[imp.neck] * (1 - u) ** 1.5
    if imp.microthreads:
        neck -= 0.09 * _thread("v", (y / 0.3) % 1) * (y > 0.25)
    radius: np.ndarray = np.where(y < collar, neck, core + threads)
    return radius


def _outline(imp: DemoImplant) -> Polygon:
    y = np.linspace(0, imp.length_mm, int(imp.length_mm * 30) + 1)
    right = np.column_stack([_radius(imp, y, 0.0), y])
    left = np.column_stack([-_radius(imp, y, 0.5), y])[::-1]
    return np.concatenate([right, left])


def _box(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _trapezoid(top: float, bottom: float, y0: float, y1: float) -> Polygon:
    """Symmetric about the axis: half-width top at y0, bottom at y1."""
    return np.array([(-top, y0), (top, y0), (bottom, y1), (-bottom, y1)])


def _ellipse(cx: float, cy: float, rx: float, ry: float, power: float = 1.0) -> Polygon:
    """An ellipse, or with power < 1 a superellipse: the squarish outline of a crown."""
    a = np.radians(np.linspace(0, 360, 48, endpoint=False))
    c, s = np.cos(a), np.sin(a)
    return np.column_stack(
        [cx + rx * np.sign(c) * np.abs(c) ** power, cy + ry * np.sign(s) * np.abs(s) ** power]
    )


def _connection(imp: DemoImplant) -> list[tuple[Polygon, float]]:
    """Hollow internal connection (darker) and, for an external hex, the hex on the platform."""
    d = imp.diameter_mm
    channel = _box(-0.1 * d, 0, 0.1 * d, 4.2)  # the abutment screw's thread
    hollows = {
        "conical": [_trapezoid(0.36 * d, 0.16 * d, 0, 2.4)],
        "morse": [_trapezoid(0.27 * d, 0.1 * d, 0, 3.6)],
        "internal-hex": [_box(-0.3 * d, 0, 0.3 * d, 1.6), _box(-0.36 * d, 0, 0.36 * d, 0.3)],
        "octagon": [_trapezoid(0.4 * d, 0.28 * d, 0, 0.9), _box(-0.28 * d, 0.9, 0.28 * d, 2.2)],
        "trilobe": [_box(-0.34 * d, 0, 0.34 * d, 2.0), _box(-0.2 * d, 2.0, 0.2 * d, 2.5)],
        "external-hex": [],
    }[imp.connection]
    drawn = [(shape, 110.0) for shape in [*hollows, channel]]
    if imp.connection == "trilobe":
        drawn.append((_box(-0.07 * d, 0, 0.07 * d, 2.0), 170.0))  # the lobe facing the beam
    if imp.connection == "external-hex":
        drawn.append((_box(-0.3 * d, -0.8, 0.3 * d, 0), 215.0))
    return drawn


def _apex_void(imp: DemoImplant) -> list[Polygon]:
    """Apical hole or vent chamber: bone shows through the metal there."""
    d, length = imp.diameter_mm, imp.length_mm
    if imp.apex == "hole":
        return [_ellipse(0, length - 2.0, 0.16 * d, 0.5)]
    if imp.apex == "chamber":
        arch = _ellipse(0, length - 1.8, 0.12 * d, 0.25 * d)[24:]  # upper half
        return [np.concatenate([arch, [(0.12 * d, length + 0.1), (-0.12 * d, length + 0.1)]])]
    return []


def _root(x: float, half: float, length: float, grow: float = 0.0) -> Polygon:
    """A tapered root from the cervical line (y = -1) to a rounded apex."""
    s = np.linspace(0, 1, 24)
    w = half * (1 - 0.6 * s) * np.sqrt(1 - s**6) + grow
    y = -1 + s * (length + grow)
    return np.concatenate([np.column_stack([x + w, y]), np.column_stack([x - w, y])[::-1]])


def _tooth(x: float, rng: np.random.Generator) -> list[tuple[Polygon, float]]:
    """A neighbouring natural tooth at x mm from the implant axis: crown, root, PDL, canal."""
    half, length = rng.uniform(2.6, 3.6), rng.uniform(12, 16)
    return [
        (_root(x, half, length, 0.45), 45.0),  # lamina dura
        (_root(x, half, length, 0.25), -15.0),  # periodontal ligament space
        (_root(x, half, length), 55.0),
        (_root(x, 0.18 * half, length - 1.5), 25.0),  # canal
        (_ellipse(x, -5.0, half + 1.3, 4.2, 0.6), 115.0),  # enamel
        (_ellipse(x, -4.0, half + 0.7, 3.0, 0.6), 70.0),  # crown dentin
        (_ellipse(x, -2.6, 0.35 * half, 1.6, 0.8), 40.0),  # pulp chamber
    ]


def _noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Smooth noise without scipy: a coarse random grid resized bicubically."""
    grid = rng.standard_normal((max(2, height // cell), max(2, width // cell))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC))


def _bone(rng: np.random.Generator, width: int, height: int, crest: float) -> np.ndarray:
    """Soft tissue above the crest, a cortical line, then trabecular bone as a ridge network."""
    low = _noise(rng, width, height, 96)
    trabeculae = np.exp(-((_noise(rng, width, height, 10) / 0.35) ** 2))
    trabeculae += 0.6 * np.exp(-((_noise(rng, width, height, 5) / 0.3) ** 2))
    rows = np.arange(height, dtype=np.float32)[:, None] - crest - 8 * _noise(rng, width, 1, 64)
    inside = 1 / (1 + np.exp(-rows / 4))
    cortical = np.exp(-(((rows - 6) / 6) ** 2))
    bone: np.ndarray = 30 + 8 * low + inside * (50 + 32 * trabeculae + 14 * low + 35 * cortical)
    return bone


@dataclass(frozen=True)
class _Shot:
    """How one exposure frames and develops the scene."""

    size: tuple[int, int]
    center: tuple[float, float]  # px where the middle of the implant lands
    scale: float
    angle: float  # degrees
    gamma: float
    gain: float
    noise: float  # sensor noise, grey levels
    blur: float  # px


def _render(
    imp: DemoImplant, shot: _Shot, bone_rng: np.random.Generator, rng: np.random.Generator,
    teeth: list[float],
) -> Image.Image:  # fmt: skip
    """Adds the attenuation of crown, abutment, implant and teeth to the bone, then exposes."""
    d, mid, px = imp.diameter_mm, imp.length_mm / 2, shot.scale * PX_PER_MM
    cos, sin = math.cos(math.radians(shot.angle)), math.sin(math.radians(shot.angle))
    turn = px * np.array([[cos, sin], [-sin, cos]])

    def place(poly: Polygon) -> list[float]:
        flat: list[float] = ((poly - (0, mid)) @ turn + shot.center).ravel().tolist()
        return flat

    crest_mm = 0.8 * imp.collar_mm if imp.neck == "flared" else 0.3
    bone = _bone(bone_rng, *shot.size, crest=shot.center[1] + px * (crest_mm - mid))
    layer = Image.new("F", shot.size, 0.0)
    draw = ImageDraw.Draw(layer)
    shapes = [shape for x in teeth for shape in _tooth(x, rng)]
    shapes += [(_ellipse(0, -5.2, 4.6, 4.0, 0.6), 75.0)]  # crown, margin at the platform
    shapes += [(_trapezoid(0.42 * d, 0.3 * d, 0, -5.5), 150.0)]  # abutment
    for poly, value in shapes:
        draw.polygon(place(poly), fill=value)
    metal = Image.new("L", shot.size, 0)
    ImageDraw.Draw(metal).polygon(place(_outline(imp)), fill=255)
    # thin metal (thread tips, edges) attenuates less than the middle of the body
    thickness = np.asarray(metal.filter(ImageFilter.BoxBlur(0.12 * d * px)))
    attenuation = np.where(np.asarray(metal) > 0, 60 + 0.67 * thickness, np.asarray(layer))
    layer = Image.fromarray(attenuation.astype(np.float32), "F")
    draw = ImageDraw.Draw(layer)
    for poly, value in [*_connection(imp), *((void, 0.0) for void in _apex_void(imp))]:
        draw.polygon(place(poly), fill=value)
    exposed = np.clip(bone + np.asarray(layer), 0, 255).astype(np.uint8)
    blurred = Image.fromarray(exposed, "L").filter(ImageFilter.GaussianBlur(shot.blur))
    pixels = 255 * (np.asarray(blurred, dtype=np.float32) / 255) ** shot.gamma * shot.gain
    pixels += rng.normal(0, shot.noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def _rng(implant: DemoImplant, *stream: int) -> np.random.Generator:
    """Seeded from the key, not the catalog position, so any DemoImplant renders stably."""
    return np.random.default_rng([zlib.crc32(implant.key.encode()), *stream])


def render_reference(implant: DemoImplant, view: int = 0) -> Image.Image:
    """View 0 is the canonical shot; later views tilt, shift, scale and expose a little apart.

    The bone phantom depends on the view number only, so references differ by their implant.
    """
    rng = _rng(implant, view)
    center = (WIDTH / 2, PLATFORM_Y + implant.length_mm / 2 * PX_PER_MM)
    shot = _Shot((WIDTH, HEIGHT), center, 1.0, 0.0, 1.0, 1.0, noise=2.0, blur=0.9)
    if view:
        shot = _Shot(
            (WIDTH, HEIGHT),
            (center[0] + rng.uniform(-10, 10), center[1] + rng.uniform(-10, 10)),
            scale=rng.uniform(0.95, 1.05),
            angle=rng.uniform(-4, 4),
            gamma=rng.uniform(0.8, 1.25),
            gain=rng.uniform(0.9, 1.08),
            noise=rng.uniform(3, 5),
            blur=rng.uniform(0.7, 1.2),
        )
    return _render(implant, shot, np.random.default_rng([view, 7]), rng, teeth=[])


def render_patient_sample(implant: DemoImplant, seed: int) -> Image.Image:
    """A "clinical" radiograph of the implant: other bone and canvas, neighbouring teeth, tilt,
    exposure and noise, as a dentist's periapical shot would differ from a reference."""
    rng = _rng(implant, seed, 1)
    width, height = ((384, 512), (448, 512), (512, 384), (416, 544))[int(rng.integers(4))]
    gap = implant.diameter_mm / 2 + rng.uniform(5.0, 6.5)
    shot = _Shot(
        (width, height),
        (width * rng.uniform(0.4, 0.6), height * 0.56 + rng.uniform(-15, 15)),
        scale=rng.uniform(0.8, 1.0) * min(1.0, height / 512),
        angle=rng.uniform(-9, 9),
        gamma=rng.uniform(0.7, 1.4),
        gain=rng.uniform(0.85, 1.1),
        noise=rng.uniform(4, 9),
        blur=rng.uniform(0.8, 1.6),
    )
    teeth = [side * gap for side in (-1, 1) if rng.random() < 0.85]
    return _render(implant, shot, rng, rng, teeth)


def png_bytes(image: Image.Image) -> bytes:
    """Fast PNG (light compression): demo data is made often and kept briefly."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()
