"""A co-denoised film of shots (farm/shots.py), with an identity anchor (an IP-Adapter
reference, one shot at its own scale), gives the same bits on any number of actors. Its own module: it starts its own actors (1, 2 and 3) on the shared Ray, which
the shared farm's pool would hold CPUs from (tests/test_shots.py renders on that farm)."""

from __future__ import annotations

import numpy as np
import pytest

from pathlib import Path

from farm.spec import parse_spec
from farm.video import read_frames
from scheduler.driver import render
from tests.test_shots import FIVE_SHOTS, film_spec

FACE = str(Path(__file__).parent.parent / "examples/tiny/portrait.png")


def _render(data, workers):
    return render(parse_spec(data), workers=workers, threads=1, store=False, farm=False)


@pytest.mark.usefixtures("shared_ray")
def test_a_co_denoised_film_has_its_planned_frames_and_the_same_bits_on_1_2_and_3_actors(tmp_path):
    shots = [*FIVE_SHOTS[:3], dict(FIVE_SHOTS[3], reference={"scale": 0.4}), FIVE_SHOTS[4]]
    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "warmup": False, "ip_adapter": "tiny"}
    frames = {}
    for n in (1, 2, 3):
        report = _render(film_spec(tmp_path, shots=shots, name=f"film{n}.mp4", model=model,
                                   reference={"image": FACE, "scale": 0.8}), workers=n)
        frames[n] = read_frames(tmp_path / f"film{n}.mp4")
        assert report["output_frames"] == 86 and len(frames[n]) == 86
    assert np.array_equal(frames[1], frames[2]) and np.array_equal(frames[1], frames[3])
    runs = report["latent"]["runs"]
    assert [r["shots"] for r in runs] == [[0], [1, 2], [3], [4]] and len({r["key"] for r in runs}) == 4
    assert report["flicker"]["cuts"] == [20, 70]
    assert not any(s["frame"] in (20, 58, 70) for s in report["seams"])  # cuts and the dissolve are no seams
    shots = report["shots"]
    assert [s["frames"] for s in shots] == [[0, 20], [20, 44], [44, 64], [58, 70], [70, 86]]
    assert [s["state"] for s in shots] == ["rendered"] * 5
    assert {w["index"]: w["reference"]["scale"] for w in report["windows"]}[report["shots"][3]["windows"][0]] == 0.4
