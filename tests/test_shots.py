"""A film of shots (farm/shots.py): cuts, fused joins and dissolves, each run stored under
its own key. The spec and the plan are pure; the renders use tiny models on the shared
farm's warm actors (a real local Ray), in both reconcile modes. The same bits on 1, 2 and
3 actors: tests/test_shots_actors.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm.errors import SpecError
from farm.plan import plan_windows
from farm.shots import compile_film
from farm.spec import parse_spec
from farm.tasks import WindowTask
from farm.video import read_frames
from scheduler.cli import main
from scheduler.driver import render
from tests.conftest import base_spec, write_spec

#: cut, fuse, dissolve 6, cut: four runs, 92 - 6 = 86 frames
FIVE_SHOTS = [
    {"frames": 20, "prompt": "a red fox in the snow", "then": "cut"},
    {"frames": 24, "prompt": "a red fox jumping", "then": "fuse"},
    {"frames": 20, "prompt": "a red fox landing", "then": {"dissolve": 6}},
    {"frames": 12, "prompt": "a grey cat on a wall", "seed": 5, "then": "cut"},
    {"frames": 16, "prompt": "a dog on a beach"},
]


def film_spec(tmp_path, shots=FIVE_SHOTS, reconcile="latent", name="film.mp4", **overrides) -> dict:
    data = base_spec(tmp_path, width=32, height=32, encode={"crf": 0, "preset": "ultrafast"},
                     window={"length": 16, "overlap": 4, "blend": "linear", "reconcile": reconcile},
                     output=str(tmp_path / name), **overrides)
    del data["frames"], data["prompt"]
    return data | {"shots": shots}


# --- the spec and the plan (pure) --------------------------------------------------------------

def test_a_film_is_planned_as_runs_and_no_window_spans_a_cut(tmp_path):
    spec = parse_spec(film_spec(tmp_path))
    film = compile_film(spec)
    assert spec.frames == film.frames == 20 + 24 + 20 + 12 + 16 - 6
    assert [r.shots for r in film.runs] == [(0,), (1, 2), (3,), (4,)]
    assert [(s.start, s.end) for s in film.shots] == [(0, 20), (20, 44), (44, 64), (58, 70), (70, 86)]
    assert film.cuts == (20, 70)  # the dissolve is no cut
    # every window lies inside one run's frames, in the output and in the render order
    for w in film.out_windows:
        run = film.run_of(w.index)
        assert run.out_start <= w.start and w.end <= run.out_start + run.frames
    for run in film.runs:
        windows = [film.windows[i] for i in run.windows]
        assert run.render_start == windows[0].start and windows[-1].end == run.render_start + run.rendered
    # the fused run's windows span the join of shots 1 and 2 (frame 24 of the run)
    fused = film.runs[1]
    assert any(w.start < 24 < w.end for w in fused.plan.windows)
    # a short shot is one shorter window; shot 3's seed is its run's
    assert [(w.start, w.end) for w in film.runs[2].plan.windows] == [(0, 12)]
    assert film.runs[2].spec.seed == 5 and film.runs[3].spec.seed == spec.seed


def test_a_run_is_numbered_from_its_own_first_frame_so_its_windows_do_not_move(tmp_path):
    """Lengthening shot 0 moves every later shot in the video, but not its windows' tasks
    (their frames, prompts and seed), so their store keys stay."""
    longer = [dict(FIVE_SHOTS[0], frames=28), *FIVE_SHOTS[1:]]
    a, b = (compile_film(parse_spec(film_spec(tmp_path, shots=s))) for s in (FIVE_SHOTS, longer))
    assert b.runs[1].out_start == a.runs[1].out_start + 8
    assert [b.task(i) for i in b.runs[1].windows] != []
    for ra, rb in zip(a.runs[1:], b.runs[1:]):
        assert [WindowTask.from_spec(ra.spec, w) for w in ra.plan.windows] == \
               [WindowTask.from_spec(rb.spec, w) for w in rb.plan.windows]


def test_a_job_without_shots_is_one_run_that_is_the_job_itself(tmp_path):
    spec = parse_spec(base_spec(tmp_path))
    film = compile_film(spec)
    assert len(film.runs) == 1 and film.runs[0].spec is spec and film.cuts == ()
    assert film.plan == plan_windows(spec) and film.out_windows == plan_windows(spec).windows
    assert film.tasks() == [WindowTask.from_spec(spec, w) for w in plan_windows(spec).windows]


def test_seconds_are_counted_at_the_job_fps_and_wan_runs_render_whole_latent_frames(tmp_path):
    data = film_spec(tmp_path, shots=[{"seconds": 1.5, "prompt": "a"}, {"frames": 10, "prompt": "b"}], fps=8)
    assert parse_spec(data).frames == 12 + 10
    wan = data | {"model": {"pipeline": "wan", "base": "tiny"}, "width": 64, "height": 64,
                  "window": {"length": 17, "overlap": 8}}
    film = compile_film(parse_spec(wan))
    # 12 and 10 frames: the shortest 4k + 1 runs that cover them are 13, whose last frames are dropped
    assert [(r.frames, r.rendered) for r in film.runs] == [(12, 13), (10, 13)]
    assert film.frames == 22


def test_splice_drops_trimmed_frames_and_crossfades_a_dissolve_linearly(tmp_path):
    spec = parse_spec(film_spec(tmp_path, shots=[{"frames": 6, "prompt": "a", "then": {"dissolve": 3}},
                                                 {"frames": 5, "prompt": "b"}]))
    film = compile_film(spec)
    a = np.full((6, 2, 2, 3), 0, np.uint8)
    b = np.full((5, 2, 2, 3), 200, np.uint8)
    splice = film.splice()
    out = [f for frame in [*a, *b] for f in splice.push(frame)]
    assert len(out) == film.frames == 8
    # frames 3-5 of shot 0 under frames 0-2 of shot 1: weights 1/4, 2/4, 3/4 of the new shot
    assert [int(f[0, 0, 0]) for f in out] == [0, 0, 0, 50, 100, 150, 200, 200]


def test_every_shot_error_is_named_in_one_run(tmp_path):
    (tmp_path / "a.png").write_bytes((Path(__file__).parent.parent / "examples/tiny/product.png").read_bytes())
    (tmp_path / "b.png").write_bytes((Path(__file__).parent.parent / "examples/tiny/coffee.png").read_bytes())
    data = base_spec(tmp_path, model={"pipeline": "wan-i2v", "base": "tiny"}, wan={"image": str(tmp_path / "a.png")},
                     width=64, height=64, window={"length": 17, "overlap": 8})
    del data["frames"], data["prompt"]
    data["shots"] = [
        {"frames": 17, "prompt": "a watch", "then": "fuse"},
        {"frames": 17, "prompt": "a cup", "image": str(tmp_path / "b.png"), "then": "cut"},
        {"frames": 3, "prompt": "too short", "then": "wipe"},
        {"frames": 9, "prompt": "last", "then": {"dissolve": 4}},
    ]
    data["frames"] = 40
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    problems = err.value.problems
    assert "shots.2.then: must be one of cut, fuse or {dissolve: N} (N frames crossfaded); got 'wipe'" in problems
    assert any(p.startswith("shots.1.image: shot 0 is fused to this one") and "fusing would drop it" in p
               for p in problems)
    assert any(p.startswith("shots.2: shot 2: 3 frames; wan-i2v renders at least 5 frames") for p in problems)
    assert any(p.startswith("shots.3.then: the last shot joins no shot after it") for p in problems)
    assert any(p.startswith("frames: a film's length is its shots'") for p in problems)


@pytest.mark.parametrize("shots, problem", [
    ([{"frames": 8, "prompt": "a", "then": "fuse"}, {"frames": 8, "prompt": "b", "guidance": 3.0}],
     "shots.1.guidance: shots joined by fuse are denoised as one run and share guidance (shot 0: 7.5, shot 1: 3.0)"),
    ([{"frames": 8, "prompt": "a", "then": {"dissolve": 8}}, {"frames": 20, "prompt": "b"}],
     "shots.0.then: dissolve 8 must be shorter than shot 0 (8 frames)"),
    ([{"frames": 8, "then": "cut"}, {"frames": 8, "prompt": "b"}],
     "shots.0: give `prompt` (one text) or `prompts` (a {frame: text} schedule)"),
    ([{"frames": 8, "seconds": 1, "prompt": "a"}], "shots.0: give exactly one of `frames` or `seconds` (at the job's fps)"),
    ([{"frames": 8, "prompt": "a", "image": "x.png"}], "shots.0.image: no file at"),
    ([{"frames": 8, "prompt": "a", "loras": {"hero": 0.5}}],
     "shots.0.loras.hero: no LoRA named 'hero' in model.loras (it has none); a shot sets the weights of the job's"),
])
def test_a_bad_shot_is_refused_naming_its_field(tmp_path, shots, problem):
    with pytest.raises(SpecError) as err:
        parse_spec(film_spec(tmp_path, shots=shots))
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_a_shot_image_is_refused_where_the_pipeline_starts_from_no_picture(tmp_path):
    (tmp_path / "a.png").write_bytes((Path(__file__).parent.parent / "examples/tiny/product.png").read_bytes())
    with pytest.raises(SpecError) as err:
        parse_spec(film_spec(tmp_path, shots=[{"frames": 8, "prompt": "a", "image": str(tmp_path / "a.png")}]))
    assert err.value.problems == ["shots.0.image: animatediff starts from no picture; a shot's image is for the "
                                  "pipelines that do"]


def test_every_identity_anchor_error_is_named_in_one_run(tmp_path):
    tiny = Path(__file__).parent.parent / "examples/tiny"
    face, cup = str(tiny / "portrait.png"), str(tiny / "coffee.png")
    shots = [{"frames": 8, "prompt": "a", "then": "fuse"}, {"frames": 8, "prompt": "b", "reference": {"image": cup}},
             {"frames": 8, "prompt": "c", "reference": {"scale": 0.5}}]
    with pytest.raises(SpecError) as err:  # no model.ip_adapter, and no job-wide picture
        parse_spec(film_spec(tmp_path, shots=shots))
    assert err.value.problems == [
        f"{field}: an identity anchor is read by an IP-Adapter: set model.ip_adapter (tiny, a folder or a hub id "
        "such as h94/IP-Adapter)" for field in ("shots.1.reference", "shots.2.reference")]
    adapter = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "ip_adapter": "tiny",
               "ip_adapter_weights": "ip-adapter_sd15.pt"}
    with pytest.raises(SpecError) as err:
        parse_spec(film_spec(tmp_path, shots=shots, model=adapter))
    assert err.value.problems == [
        "model.ip_adapter_weights: must name a .safetensors (or .bin) file in the adapter's models/ folder, e.g. "
        "ip-adapter_sd15.safetensors; got 'ip-adapter_sd15.pt'",
        "shots.2.reference.image: field required: the job has no reference picture for the shot's scale",
        "shots.1.reference: shots joined by fuse are denoised as one run with one identity anchor (shot 0: none, "
        "shot 1: coffee.png at scale 1.0); give the same, or join them with cut or dissolve"]
    # a job-wide picture: the fused shots share it when shot 1 names the same one; shot 2 only sets a scale
    job = film_spec(tmp_path, shots=[dict(shots[0]), dict(shots[1], reference={"image": face}), shots[2]],
                    model=dict(adapter, ip_adapter_weights="ip-adapter_sd15.safetensors"),
                    reference={"image": face, "scale": 1.0})
    film = compile_film(parse_spec(job))
    assert [(r.spec.reference.image, r.spec.reference.scale) for r in film.runs] == [(face, 1.0), (face, 0.5)]
    for pipeline, extra in (("svd", {"svd": {"image": cup}}), ("wan-i2v", {"wan": {"image": cup}})):
        with pytest.raises(SpecError) as err:
            parse_spec(base_spec(tmp_path, model={"pipeline": pipeline, "base": "tiny", "ip_adapter": "tiny"},
                                 prompt=None if pipeline == "svd" else "a", frames=9, reference={"image": face},
                                 window={"length": 9, "overlap": 1, "reconcile": "crossfade"}, **extra))
        anchored = [p for p in err.value.problems if p.startswith(("reference:", "model.ip_adapter:"))]
        assert len(anchored) == 2 and all(f"{pipeline} is anchored by the picture" in p for p in anchored), \
            err.value.problems


def test_the_anchor_enters_the_window_keys_and_scale_0_keys_as_no_anchor(tmp_path):
    """A window's key names its anchor's picture (by content) and scale: another picture
    or scale renders again, scale 0 reads what a job without an anchor (same adapter) stored."""
    from farm.keys import model_identity, task_key
    from farm.pipelines import descriptor

    tiny = Path(__file__).parent.parent / "examples/tiny"
    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "ip_adapter": "tiny"}

    def key(**overrides):
        spec = parse_spec(base_spec(tmp_path, model=model, **overrides))
        task = descriptor("animatediff").window_inputs(spec, compile_film(spec).task(0), None)
        return task_key(model_identity(spec, "cpu"), task)

    face = {"image": str(tiny / "portrait.png"), "scale": 0.8}
    keys = [key(reference=face), key(reference=face | {"scale": 0.5}),
            key(reference=face | {"image": str(tiny / "coffee.png")}), key()]
    assert len(set(keys)) == 4
    assert key(reference=face | {"scale": 0}) == key()
    copy = tmp_path / "same-face.png"  # the picture by content, not by path
    copy.write_bytes((tiny / "portrait.png").read_bytes())
    assert key(reference=face | {"image": str(copy)}) == keys[0]


def test_a_shot_s_lora_weights_enter_its_windows_keys_and_fused_shots_share_them(tmp_path):
    from farm.keys import model_identity, task_key

    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny",
             "loras": [{"id": "tiny-sd-lora", "name": "style", "weight": 0.8}, {"id": "tiny-motion-lora", "name": "zoom"}]}
    shots = [{"frames": 8, "prompt": "a", "then": "cut"}, {"frames": 8, "prompt": "a", "loras": {"style": 0.0}},
             {"frames": 8, "prompt": "a", "loras": {"style": 0.8}}]
    spec = parse_spec(film_spec(tmp_path, shots=shots, model=model))
    film = compile_film(spec)
    assert [r.lora_weights for r in film.runs] == [None, (0.0, 1.0), None]  # the job's weights again: the job's
    keys = [task_key(model_identity(spec, "cpu"), film.task(r.first_window)) for r in film.runs]
    assert keys[0] == keys[2] != keys[1]  # the same frames and prompt; only the weights differ
    fused = [dict(shots[0], then="fuse"), shots[1]]
    with pytest.raises(SpecError) as err:
        parse_spec(film_spec(tmp_path, shots=fused, model=model))
    assert err.value.problems == [
        "shots.1.loras: shots joined by fuse are denoised as one run with one set of LoRA weights (shot 0: "
        "{'style': 0.8, 'zoom': 1.0}, shot 1: {'style': 0.0, 'zoom': 1.0}); give the same, or join them with cut or "
        "dissolve"]


def test_farm_plan_lists_shots_with_their_runs_and_windows(tmp_path):
    job = write_spec(tmp_path, film_spec(tmp_path))
    result = CliRunner().invoke(main, ["plan", str(job), "--json", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["frames"] == 86
    assert [(s["index"], s["then"], s["run"]) for s in plan["shots"]] == [
        (0, "cut", 0), (1, "fuse", 1), (2, "dissolve", 1), (3, "cut", 2), (4, "cut", 3)]
    assert [s["frames"] for s in plan["shots"]] == [[0, 20], [20, 44], [44, 64], [58, 70], [70, 86]]
    # windows in the video's frames; the runs' windows never share a frame across a cut
    windows = {w["index"]: (w["start"], w["end"]) for w in plan["windows"]}
    assert windows[plan["shots"][3]["windows"][0]] == (58, 70)
    assert plan["store"]["runs"][0]["latent_step"] == 0


# --- renders on a real Ray -----------------------------------------------------------------------


def _render(data, store=None):
    """On the shared farm's warm actors (`warm_farm`): their pipelines stay loaded from one
    render to the next."""
    return render(parse_spec(data), workers=1, threads=1, store=store if store is not None else False)


@pytest.mark.usefixtures("warm_farm")
@pytest.mark.parametrize("reconcile", ["latent", "crossfade"])
def test_editing_one_shot_renders_only_its_windows_and_keeps_every_other_frame(tmp_path, reconcile):
    store = tmp_path / "store"
    store.mkdir()
    shots = [dict(FIVE_SHOTS[0]), dict(FIVE_SHOTS[1], then="cut"), {"frames": 24, "prompt": "a hawk", "then": "cut"},
             dict(FIVE_SHOTS[3]), dict(FIVE_SHOTS[4])]
    _render(film_spec(tmp_path, shots=shots, reconcile=reconcile), store=str(store))
    a = read_frames(tmp_path / "film.mp4")
    shots[2] = dict(shots[2], prompt="an owl")
    again = _render(film_spec(tmp_path, shots=shots, reconcile=reconcile), store=str(store))  # the same output
    b = read_frames(tmp_path / "film.mp4")
    assert len(a) == len(b) == 96
    lo, hi = again["shots"][2]["frames"]
    assert (lo, hi) == (44, 68)
    assert np.array_equal(a[:lo], b[:lo]) and np.array_equal(a[hi:], b[hi:])
    assert not np.array_equal(a[lo:hi], b[lo:hi])
    assert [s["state"] for s in again["shots"]] == ["from the store"] * 2 + ["rendered"] + ["from the store"] * 2
    shot_windows = set(again["shots"][2]["windows"])
    rendered = {w["index"] for w in again["windows"] if not w["cached"]}
    assert rendered == shot_windows
    if reconcile == "latent":
        assert [r["from_store"] for r in again["latent"]["runs"]] == [True, True, False, True, True]
        assert "changed since the last render" in again["latent"]["runs"][2]["rendered_again"]


@pytest.mark.usefixtures("warm_farm")
@pytest.mark.parametrize("reconcile", ["latent", "crossfade"])
def test_an_identity_anchor_and_a_lora_change_their_shots_and_at_0_render_as_none(tmp_path, reconcile):
    """Shot 0 has the job's anchor and LoRA, shot 1 turns both off (scale 0, weight 0):
    shot 0 differs from the same film without an IP-Adapter or LoRA, shot 1 is its bits
    exactly (the adapter's attention is skipped at scale 0; a LoRA at weight 0 adds
    nothing), although its actors hold both loaded."""
    face = str(Path(__file__).parent.parent / "examples/tiny/portrait.png")
    shots = [{"frames": 20, "prompt": "a woman smiling", "then": "cut"},
             {"frames": 12, "prompt": "a woman walking", "reference": {"scale": 0}, "loras": {"style": 0.0}}]
    plain = film_spec(tmp_path, shots=[shots[0], dict(shots[1], reference=None, loras=None)], reconcile=reconcile,
                      name="plain.mp4")
    model = dict(plain["model"], ip_adapter="tiny", loras=[{"id": "tiny-sd-lora", "name": "style", "weight": 1.0}])
    anchored = film_spec(tmp_path, shots=shots, reconcile=reconcile, name="anchored.mp4", model=model,
                         reference={"image": face, "scale": 0.8})
    _render(plain)
    report = _render(anchored)
    a, b = read_frames(tmp_path / "plain.mp4"), read_frames(tmp_path / "anchored.mp4")
    assert len(a) == len(b) == 32
    assert np.abs(a[:20].astype(int) - b[:20]).mean() > 1.0
    assert np.array_equal(a[20:], b[20:])
    assert [w.get("reference") for w in report["windows"]] == [{"image": face, "scale": 0.8}] * 2 + [None]
    assert [s["loras"] for s in report["shots"]] == [None, {"style": 0.0}]


@pytest.mark.usefixtures("warm_farm")
def test_rife_never_interpolates_across_a_cut_but_does_inside_a_shot(tmp_path):
    from farm.rife import weights

    weights.pull()
    data = film_spec(tmp_path, reconcile="crossfade",
                     interpolate={"factor": 2, "chunk": 4, "workers": 1, "scene_threshold": 0})
    report = _render(data)
    out = read_frames(tmp_path / "film.mp4").astype(np.int16)
    assert len(out) == 2 * 86 and report["interpolate"]["cuts"] == [20, 70]
    step = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2, 3))
    for f in (20, 70):  # output 2f - 1 shows the new shot: no frame between the two shots
        assert np.array_equal(out[2 * f - 1], out[2 * f])
        assert step[2 * f - 2] > 1.0
    for i in (5, 30, 60, 75):  # inside a shot each pair got a middle frame of its own
        assert not np.array_equal(out[2 * i + 1], out[2 * i]) and not np.array_equal(out[2 * i + 1], out[2 * i + 2])


@pytest.mark.usefixtures("warm_farm")
def test_a_shot_after_a_cut_renders_as_a_job_of_its_own_from_its_control_range(tmp_path):
    """animatediff-controlnet: shot 1 reads the pose frames from its control_start, and its
    frames are the bits of a job that renders just that shot."""
    poses = str(Path(__file__).parent.parent / "examples/tiny/poses")
    common = {"model": {"pipeline": "animatediff-controlnet", "base": "tiny", "motion_adapter": "tiny",
                        "warmup": False}, "control": {"video": poses}}
    film = film_spec(tmp_path, shots=[{"frames": 4, "prompt": "a dancer", "then": "cut"},
                                      {"frames": 8, "prompt": "a dancer spinning", "seed": 3, "control_start": 14}],
                     steps=1, **common)
    alone = base_spec(tmp_path, width=32, height=32, encode={"crf": 0, "preset": "ultrafast"}, frames=8, steps=1,
                      prompt="a dancer spinning", seed=3, output=str(tmp_path / "alone.mp4"),
                      window={"length": 8, "overlap": 4, "blend": "linear", "reconcile": "latent"},
                      **(common | {"control": {"video": poses, "start": 14}}))
    shifted = dict(alone, control={"video": poses, "start": 13}, output=str(tmp_path / "shifted.mp4"))
    for job in (film, alone, shifted):
        _render(job)
    shot = read_frames(tmp_path / "film.mp4")[4:]
    assert np.array_equal(shot, read_frames(tmp_path / "alone.mp4"))
    assert not np.array_equal(shot, read_frames(tmp_path / "shifted.mp4"))  # the pose frames count


@pytest.mark.usefixtures("warm_farm")
def test_svd_shots_each_start_their_chain_from_their_own_picture(tmp_path):
    tiny = Path(__file__).parent.parent / "examples/tiny"
    data = film_spec(tmp_path, shots=[{"frames": 8, "then": "cut"}, {"frames": 8, "image": str(tiny / "coffee.png")}],
                     reconcile="crossfade", model={"pipeline": "svd", "base": "tiny", "warmup": False},
                     svd={"image": str(tiny / "product.png")}, steps=2)
    data["window"] |= {"length": 8, "overlap": 1}
    report = _render(data)
    assert report["output_frames"] == 16 and report["flicker"]["cuts"] == [8]
    assert [w["conditioned_on"] for w in report["windows"]] == [{"image": str(tiny / "product.png")},
                                                               {"image": str(tiny / "coffee.png")}]
