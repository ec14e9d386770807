"""The synthetic demo catalog: 4 manufacturers x 8 distinct designs, deterministic views."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from PIL import ImageFilter

from appliance.demo_catalog import DEMO_IMPLANTS, SYNTHETIC_NOTE, png_bytes, render_reference


def pixels(implant_index: int, view: int) -> np.ndarray:
    image = render_reference(DEMO_IMPLANTS[implant_index], view).filter(ImageFilter.BoxBlur(3))
    return np.asarray(image, dtype=np.float32)


def test_catalog_shape_and_labels() -> None:
    assert len(DEMO_IMPLANTS) == 32
    assert Counter(i.manufacturer for i in DEMO_IMPLANTS) == {
        "Nobel Biocare": 8,
        "Straumann": 8,
        "Neodent": 8,
        "Zimmer": 8,
    }
    assert len({i.key for i in DEMO_IMPLANTS}) == len({i.name for i in DEMO_IMPLANTS}) == 32
    assert all("demo" in i.name and "synthetic" in i.type for i in DEMO_IMPLANTS)
    assert "Synthetic" in SYNTHETIC_NOTE


def test_rendering_is_deterministic_and_radiograph_like() -> None:
    implant = DEMO_IMPLANTS[4]
    assert png_bytes(render_reference(implant, 1)) == png_bytes(render_reference(implant, 1))
    image = render_reference(implant, 0)
    assert image.mode == "L"
    data = np.asarray(image, dtype=np.float32)
    center = data[150:300, 180:204].mean()  # the implant body
    assert center > data[:, :40].mean() + 80, "the implant is radio-opaque against bone"


def test_designs_are_distinct_and_views_stay_closer_than_designs() -> None:
    canonical = [pixels(i, 0) for i in range(32)]
    between = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(canonical, 2)]
    assert min(between) > 1.0, "every pair of designs differs visibly"
    for i in range(0, 32, 5):
        view = pixels(i, 1)
        own = float(np.abs(view - canonical[i]).mean())
        others = sorted(float(np.abs(view - c).mean()) for j, c in enumerate(canonical) if j != i)
        assert own < np.median(others)
