"""Curation steps one by one, on the sample's raw video and on bad inputs (no Ray, no detector)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bad_videos import write_bad_inputs
from vidrip.curate.clips import ClipsConfig, WriteClips, crop_box
from vidrip.curate.inputs import InputError, resolve_inputs
from vidrip.curate.keyframes import Keyframes, KeyframesConfig, keyframe_indices, nearest_keyframe
from vidrip.curate.pipeline import Chain, CurateConfig, ResourcesConfig
from vidrip.curate.probe import Probe, ProbeConfig
from vidrip.curate.rows import get_state
from vidrip.curate.shots import Shots, ShotsConfig
from vidrip.curate.text import TextConfig, inpaint_boxes, make_reader
from vidrip.curate.trim import Trim, TrimConfig, label_runs
from vidrip.data.video import FramePolicy, read_frames


def _row(path) -> dict:
    return {"key": "v", "path": str(path), "state": json.dumps({})}


@pytest.fixture(scope="module")
def raw(sample_dir):
    video = sample_dir / "raw" / "teach_00.mp4"
    return video, json.loads(video.with_suffix(".truth.json").read_text())


@pytest.fixture(scope="module")
def bad(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_inputs(folder, raw[0])


def test_probe_reads_a_good_video(raw):
    video, truth = raw
    state = get_state(Probe(ProbeConfig())(_row(video)))
    assert state.get("error") is None
    v = state["video"]
    assert (v["width"], v["height"], v["num_frames"]) == (truth["width"], truth["height"], truth["num_frames"])
    assert v["fps"] == pytest.approx(truth["fps"]) and v["has_audio"]


def test_probe_and_shots_give_each_bad_input_its_reason(bad):
    folder, expected = bad
    split = Chain([(Shots, (ShotsConfig(), 2)), (Keyframes, (KeyframesConfig(), 2))])
    for name, reason in expected.items():
        row = Probe(ProbeConfig())(_row(folder / name))
        rows = split(row)
        states = [get_state(r) for r in rows]
        if reason is None:  # the 4K video: decoded downscaled, never at full size
            assert all(s.get("error") is None for s in states), (name, states)
            assert max(rows[0]["frames"].shape[1:3]) <= ShotsConfig().max_side
        else:
            assert len(states) == 1 and states[0]["error"] is not None, name
            assert reason in states[0]["error"]["reason"], (name, states[0]["error"])
            assert states[0]["error"]["reason"], name


def test_probe_limit_on_frame_size_names_the_size(bad):
    folder, _ = bad
    state = get_state(Probe(ProbeConfig(max_pixels=1920 * 1080))(_row(folder / "frame_4k.mp4")))
    assert state["error"] == {"step": "probe", "reason": "frame size 3840x2160 exceeds the limit of 2.1 Mpixel"}


def test_shots_match_the_sample_cuts_and_carry_narration(raw):
    video, truth = raw
    row = Probe(ProbeConfig())(_row(video))
    state = get_state(row)
    state["transcript"] = [{"start": n["start"], "end": n["end"], "text": n["text"]} for n in truth["narration"]]
    row["state"] = json.dumps(state)
    shots = Shots(ShotsConfig(), clip_fps=2)(row)
    starts = [get_state(r)["shot"]["start"] for r in shots]
    assert starts == [0.0] + [c / truth["fps"] for c in truth["cuts"]]
    for r in shots:
        st = get_state(r)
        assert len(r["frames"]) == len(st["frame_times"]) == round((st["shot"]["end"] - st["shot"]["start"]) * 2)
        assert st["transcript"] and all(seg["end"] > st["shot"]["start"] for seg in st["transcript"])
    # the clip frames are the video's frames at those times
    first = get_state(shots[1])["frame_times"][0]
    ref = read_frames(video, FramePolicy(rule="fps", fps=10, max_frames=1000)).array[round(first * truth["fps"])]
    assert np.abs(shots[1]["frames"][0].astype(int) - ref.astype(int)).mean() < 2


def test_keyframes_one_per_second_and_nearest():
    assert keyframe_indices(12, clip_fps=2, fps=1) == [0, 2, 4, 6, 8, 10]
    assert keyframe_indices(1, clip_fps=5, fps=1) == [0]
    assert keyframe_indices(10, clip_fps=5, fps=1) == [2, 7]
    assert nearest_keyframe(6, [1, 4]).tolist() == [0, 0, 0, 1, 1, 1]


def test_label_runs_and_trim_drop_leading_presenter_and_short_runs():
    assert label_runs(["a", "a", "b", "a"]) == [(0, 2, "a"), (2, 3, "b"), (3, 4, "a")]
    n = 12
    dets = [
        {"label": "presenter fills the view", "tissue_box": None, "persons": [[0, 0, 64, 48]]},
        {"label": "ok", "tissue_box": [10, 10, 50, 40], "persons": []},
        {"label": "ok", "tissue_box": [12, 8, 54, 40], "persons": []},
        {"label": "no tissue", "tissue_box": None, "persons": []},
        {"label": "ok", "tissue_box": [10, 10, 50, 40], "persons": []},
        {"label": "no tissue", "tissue_box": None, "persons": []},
    ]
    state = {
        "shot": {"index": 0, "count": 1, "start": 0.0, "end": 6.0, "decoded": 24},
        "frame_times": [i / 2 for i in range(n)],
        "keyframes": [0, 2, 4, 6, 8, 10],
        "detections": dets,
        "transcript": [{"start": 1.0, "end": 3.0, "text": "look here"}],
    }
    row = {
        "key": "v",
        "path": "x.mp4",
        "shot": 0,
        "frames": np.zeros((n, 48, 64, 3), np.uint8),
        "state": json.dumps(state),
    }
    out = Trim(TrimConfig(min_seconds=1.5), clip_fps=2)(row)
    assert len(out) == 1
    st = get_state(out[0])
    assert st["clip"]["start"] == 1.0 and st["clip"]["end"] == 3.0 and st["clip"]["num_frames"] == 4
    assert len(out[0]["frames"]) == 4
    assert st["clip"]["tissue_boxes"] == [[10, 10, 50, 40], [12, 8, 54, 40]]
    reasons = [(d["reason"], d["start"], d["end"]) for d in st["drops"]]
    assert reasons[0] == ("presenter fills the view", 0.0, 1.0)
    assert ("no tissue", 3.0, 4.0) in reasons
    assert any(r.startswith("tissue run shorter") and (s, e) == (4.0, 5.0) for r, s, e in reasons)
    assert ("no tissue", 5.0, 6.0) in reasons
    assert st["shot_stats"]["keyframes_ok"] == 3 and st["clips_in_shot"] == 1


def test_trim_leaves_one_row_for_a_shot_without_clips():
    state = {
        "shot": {"index": 0, "count": 1, "start": 0.0, "end": 1.0, "decoded": 4},
        "frame_times": [0.0, 0.5],
        "keyframes": [0],
        "detections": [{"label": "no tissue", "tissue_box": None, "persons": []}],
        "transcript": [],
    }
    row = {
        "key": "v",
        "path": "x.mp4",
        "shot": 0,
        "frames": np.zeros((2, 8, 8, 3), np.uint8),
        "state": json.dumps(state),
    }
    (out,) = Trim(TrimConfig(), clip_fps=2)(row)
    st = get_state(out)
    assert st["clip"] is None and st["clips_in_shot"] == 0 and st["drops"][0]["reason"] == "no tissue"


def test_crop_box_pads_clips_and_is_even():
    assert crop_box([[10.2, 11, 50, 40.5], [12, 8, 53, 40]], 64, 48, pad=2) == (8, 6, 54, 42)
    x0, y0, x1, y1 = crop_box([[1, 1, 62.5, 47]], 64, 48, pad=4)
    assert (x0, y0) == (0, 0) and (x1 - x0) % 2 == 0 and (y1 - y0) % 2 == 0 and x1 <= 64 and y1 <= 48
    assert crop_box([], 65, 47, pad=4) == (0, 0, 64, 46)


def test_write_clips_crops_and_mutes(tmp_path):
    import av

    frames = np.zeros((4, 64, 96, 3), np.uint8)
    frames[:, 10:50, 10:70] = (200, 80, 150)
    state = {
        "clip": {"index": 0, "start": 1.0, "end": 3.0, "num_frames": 4, "tissue_boxes": [[10, 10, 70, 50]]},
        "drops": [],
    }
    row = {
        "key": "vid",
        "path": "x.mp4",
        "shot": 3,
        "frames": frames,
        "preview": np.zeros((2, 12, 16, 3), np.uint8),
        "state": json.dumps(state),
    }
    out = WriteClips(ClipsConfig(fps=2, pad=0), tmp_path)(row)
    clip = get_state(out)["clip"]
    assert clip["file"] == "clips/vid_s03c00.mp4" and (clip["width"], clip["height"]) == (60, 40)
    with av.open(str(tmp_path / clip["file"])) as c:
        assert len(c.streams.audio) == 0 and c.streams.video[0].average_rate == 2
    assert len(out["frames"]) == 0 and out["preview"].shape == (3, 12, 16, 3)
    got = read_frames(tmp_path / clip["file"], FramePolicy(rule="uniform", num_frames=4)).array
    assert got.shape == (4, 40, 60, 3) and abs(float(got.mean()) - 143.3) < 6  # the tissue colour, cropped


def test_ocr_reads_a_caption_and_inpainting_removes_it(raw):
    video, truth = raw
    i = next(f["frame"] for f in truth["frames"] if f["text"])
    frame = read_frames(video, FramePolicy(rule="fps", fps=10, max_frames=1000)).array[i]
    reader = make_reader(TextConfig())
    (found,) = reader.read([frame])
    assert found, "rapidocr finds the burned-in caption"
    words = "".join(truth["frames"][i]["text"][0]["text"].split()).lower()
    assert any("".join(t.text.split()).lower() in words or words in "".join(t.text.split()).lower() for t in found)
    clean = inpaint_boxes(frame, [t.box for t in found], dilate=3, radius=3)
    (after,) = reader.read([clean])
    assert after == []


def test_doctr_backend_builds_offline_and_loads_saved_weights(tmp_path):
    import torch
    from doctr.models import detection, recognition

    det = detection.db_mobilenet_v3_large(pretrained=False, pretrained_backbone=False)
    reco = recognition.crnn_mobilenet_v3_small(pretrained=False, pretrained_backbone=False)
    torch.save(det.state_dict(), tmp_path / "det.pt")
    torch.save(reco.state_dict(), tmp_path / "reco.pt")
    cfg = TextConfig(
        backend="doctr", doctr_det_weights=str(tmp_path / "det.pt"), doctr_reco_weights=str(tmp_path / "reco.pt")
    )
    reader = make_reader(cfg)
    loaded = reader.predictor.det_predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in det.state_dict().items())
    boxes = reader.read([np.full((64, 96, 3), 255, np.uint8)])
    assert len(boxes) == 1 and all(0 <= b.box[0] <= b.box[2] <= 96 for b in boxes[0])


def test_inputs_folders_globs_and_manifests(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/y.MOV", "a/notes.txt", "z.mkv"):
        (tmp_path / name).write_bytes(b"0")
    manifest = tmp_path / "list.txt"
    manifest.write_text("# lectures\nz.mkv\nmissing.mp4\n")
    got = resolve_inputs([str(tmp_path / "a"), str(tmp_path / "*.mkv"), str(manifest)])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a/x.mp4", "a/y.MOV", "missing.mp4", "z.mkv"]
    with pytest.raises(InputError, match="nothing_here"):
        resolve_inputs([str(tmp_path / "nothing_here")])


def test_curate_config_checks_keyframes_against_clip_rate():
    with pytest.raises(ValueError, match=r"keyframes.fps 2.0 > clips.fps 1"):
        CurateConfig(inputs=["x"], keyframes={"fps": 2}, clips={"fps": 1})


def test_layout_is_split_only_with_gpus_and_whole_actors_fit_the_cpus():
    res = ResourcesConfig()
    assert res.chosen_layout(gpus=0) == "whole" and res.chosen_layout(gpus=1) == "split"
    assert ResourcesConfig(gpu="never").chosen_layout(gpus=4) == "whole"
    assert ResourcesConfig(layout="split").chosen_layout(gpus=0) == "split"
    assert res.whole_actors(cpus=2, inputs=24) == 2 and res.whole_actors(cpus=2, inputs=1) == 1
    assert ResourcesConfig(whole={"num_cpus": 0.5}).whole_actors(cpus=2, inputs=24) == 4
    assert ResourcesConfig(whole={"max_actors": 3}).whole_actors(cpus=16, inputs=24) == 3
    assert res.whole_actors(cpus=0.5, inputs=3) == 1  # a cluster smaller than one actor still gets one
    with pytest.raises(ValueError, match="layout"):
        ResourcesConfig(layout="fused")


def test_an_input_is_complete_only_when_every_shot_and_clip_has_arrived(tmp_path):
    from vidrip.curate.outputs import VideoOutcome

    def row(shot: int, clip: int | None, clips_in_shot: int, error=None) -> dict:
        state = {
            "shot": {"index": shot, "count": 3, "start": shot * 2.0, "end": shot * 2.0 + 2},
            "clips_in_shot": clips_in_shot,
            "clip": None if clip is None else {"index": clip},
            "error": error,
        }
        return {"key": "v", "path": "v.mp4", "state": json.dumps(state)}

    outcome = VideoOutcome("v", tmp_path / "v.mp4", "sha")
    arrivals = [row(2, None, 0), row(0, 1, 2), row(1, None, 0, error={"step": "text", "reason": "boom"}), row(0, 0, 2)]
    for i, r in enumerate(arrivals):
        assert not outcome.complete
        outcome.add(r)
        assert outcome.complete == (i == len(arrivals) - 1)
    # a clip that fails after trimming still counts as one of its shot's rows
    late = VideoOutcome("u", tmp_path / "u.mp4", "sha")
    late.add(row(0, 0, 2, error={"step": "clips", "reason": "disk full"}))
    late.add(row(1, None, 0))
    late.add(row(2, None, 0))
    assert not late.complete
    late.add(row(0, 1, 2))
    assert late.complete
    rejected = VideoOutcome("w", tmp_path / "w.mp4", "sha")
    rejected.add({"key": "w", "path": "w.mp4", "state": json.dumps({"error": {"step": "probe", "reason": "empty"}})})
    assert rejected.complete
