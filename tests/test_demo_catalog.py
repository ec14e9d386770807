"""The synthetic demo catalog: 4 manufacturers x 8 distinct designs, deterministic views."""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from appliance.catalog.demo import (
    DEMO_IMPLANTS,
    PLATFORM_Y,
    PX_PER_MM,
    SYNTHETIC_NOTE,
    png_bytes,
    render_patient_sample,
    render_reference,
)

VIEWS = (1, 2, 3)


def smooth(image: Image.Image) -> np.ndarray:
    """A small blur, so sensor noise does not count as a difference."""
    return np.asarray(image.filter(ImageFilter.BoxBlur(2)), dtype=np.float32)


@pytest.fixture(scope="module")
def canonical() -> list[np.ndarray]:
    return [smooth(render_reference(implant, 0)) for implant in DEMO_IMPLANTS]


def test_catalog_has_four_manufacturers_of_eight_labelled_designs() -> None:
    assert len(DEMO_IMPLANTS) == 32
    assert Counter(i.manufacturer for i in DEMO_IMPLANTS) == {
        "Nobel Biocare": 8,
        "Straumann": 8,
        "Neodent": 8,
        "Zimmer": 8,
    }
    assert len({i.key for i in DEMO_IMPLANTS}) == len({i.name for i in DEMO_IMPLANTS}) == 32
    assert all(
        re.fullmatch(r"(nobel|straumann|neodent|zimmer)-0[1-8]", i.key) for i in DEMO_IMPLANTS
    )
    assert all(i.name.endswith("(demo)") and "synthetic" in i.type for i in DEMO_IMPLANTS)
    designs = {dataclasses.astuple(i)[4:] for i in DEMO_IMPLANTS}  # platform onwards
    assert len(designs) == 32
    assert "synthetic" in SYNTHETIC_NOTE.lower() and "not a real" in SYNTHETIC_NOTE


def test_rendering_is_deterministic_and_png_is_lossless() -> None:
    implant = DEMO_IMPLANTS[4]
    renders: list[Callable[[], Image.Image]] = [
        lambda: render_reference(implant, 0),
        lambda: render_reference(implant, 2),
        lambda: render_patient_sample(implant, seed=3),
    ]
    for render in renders:
        first = png_bytes(render())
        assert first == png_bytes(render())
        decoded = Image.open(io.BytesIO(first))
        assert decoded.mode == "L"
        assert np.array_equal(np.asarray(decoded), np.asarray(render()))


@pytest.mark.parametrize("index", range(0, 32, 5))
def test_reference_is_a_radio_opaque_implant_in_darker_bone(index: int) -> None:
    implant = DEMO_IMPLANTS[index]
    image = render_reference(implant, 0)
    assert (image.mode, image.size) == ("L", (384, 512))
    data = np.asarray(image, dtype=np.float32)
    half = int(implant.diameter_mm * PX_PER_MM / 4)
    top, bottom = PLATFORM_Y + int(3 * PX_PER_MM), PLATFORM_Y + int(implant.length_mm * PX_PER_MM)
    body = data[top : bottom - int(2 * PX_PER_MM), 192 - half : 192 + half]
    bone = data[top:bottom, :60]  # beside the implant, below the crest
    assert body.mean() > 200
    assert body.mean() > bone.mean() + 80


def test_patient_samples_vary_and_keep_the_implant_brightest() -> None:
    implant = DEMO_IMPLANTS[7]
    samples = [render_patient_sample(implant, seed) for seed in range(6)]
    assert len({s.size for s in samples}) > 1, "canvases vary like real sensors"
    assert len({png_bytes(s) for s in samples}) == 6
    for sample in samples:
        assert sample.mode == "L"
        data = np.asarray(sample, dtype=np.float32)
        assert np.percentile(data, 99) > np.median(data) + 80
    reference = render_reference(implant, 0)
    assert samples[0].size != reference.size or png_bytes(samples[0]) != png_bytes(reference)


def test_every_pair_of_designs_differs_clearly(canonical: list[np.ndarray]) -> None:
    """Canonical views share one bone phantom, so what differs is the implant itself: at least
    2 mm² of film where one design has metal and the other has not."""
    min_area = 2 * PX_PER_MM**2
    for (i, a), (j, b) in itertools.combinations(enumerate(canonical), 2):
        area = int((np.abs(a - b) > 60).sum())
        assert area > min_area, (DEMO_IMPLANTS[i].key, DEMO_IMPLANTS[j].key, area)


def test_views_differ_but_stay_closer_to_their_own_implant(canonical: list[np.ndarray]) -> None:
    own_all, others_all = [], []
    for i, implant in enumerate(DEMO_IMPLANTS):
        for view in VIEWS:
            pixels = smooth(render_reference(implant, view))
            own = float(np.abs(pixels - canonical[i]).mean())
            others = sorted(
                float(np.abs(pixels - c).mean()) for j, c in enumerate(canonical) if j != i
            )
            assert own > 2, f"{implant.key} view {view} is a different shot"
            assert own < others[len(others) // 2], f"{implant.key} view {view} looks like others"
            own_all.append(own)
            others_all.append(float(np.mean(others)))
    assert np.mean(own_all) < 0.9 * np.mean(others_all)
