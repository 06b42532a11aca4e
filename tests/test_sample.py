"""The embedded sample corpus: real H.264 videos with narration, ground truth, five valid data sets."""

import json
import shutil
import subprocess

import pytest

from vidrip.data.sample.build import DATASET_FILES, SampleConfig, build_sample
from vidrip.data.schema import InstructionRecord, TestRecord, load_records


def _streams(path):
    out = subprocess.run(
        [
            shutil.which("ffprobe"),
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {(s["codec_type"], s["codec_name"]) for s in json.loads(out.stdout)["streams"]}


def test_raw_videos_are_h264_with_an_audio_track(sample_dir):
    raw = sorted((sample_dir / "raw").glob("*.mp4"))
    assert raw
    for video in raw:
        assert _streams(video) == {("video", "h264"), ("audio", "aac")}


def test_clips_are_muted_h264(sample_dir):
    for clip in (sample_dir / "clips").glob("*.mp4"):
        assert _streams(clip) == {("video", "h264")}


def test_ground_truth_has_tissue_text_presenter_and_a_hard_cut(sample_dir):
    truth = json.loads((sample_dir / "raw" / "teach_00.truth.json").read_text())
    frames = truth["frames"]
    assert len(frames) == truth["num_frames"]
    assert any(f["tissue_box"] for f in frames)
    assert any(f["text"] for f in frames) and all(t["text"] and len(t["box"]) == 4 for f in frames for t in f["text"])
    dominant = [f for f in frames if f["presenter_dominant"]]
    pip = [f for f in frames if f["presenter_box"] and not f["presenter_dominant"]]
    assert dominant and pip
    assert all(f["tissue_box"] is None for f in dominant)
    # a hard cut between two different slides
    sources = {s["start_frame"]: s["source"] for s in truth["shots"]}
    slide_cuts = [
        c for c in truth["cuts"] if sources[c] is not None and frames[c - 1]["source"] not in (None, sources[c])
    ]
    assert slide_cuts
    assert [n["text"] for n in truth["narration"]] and all(n["end"] > n["start"] for n in truth["narration"])


def test_boxes_lie_inside_the_frame(sample_dir):
    truth = json.loads((sample_dir / "raw" / "teach_00.truth.json").read_text())
    w, h = truth["width"], truth["height"]
    for f in truth["frames"]:
        boxes = [b for b in (f["tissue_box"], f["presenter_box"]) if b] + [t["box"] for t in f["text"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@pytest.mark.parametrize("stage", sorted(DATASET_FILES))
def test_each_data_set_validates_with_its_media(sample_dir, stage):
    kind = TestRecord if stage == "test" else InstructionRecord
    records = load_records(sample_dir / DATASET_FILES[stage], kind, media_root=sample_dir).records
    assert records
    if stage == "stage3":
        assert all(r.conversations[-1].value.rsplit("Diagnosis: ", 1)[1] for r in records)
        assert all(r.video for r in records)
    if stage in ("stage0", "stage1"):
        assert all(r.image for r in records)
    if stage == "test":
        assert all("Diagnosis: " in r.answer for r in records)


def test_metadata_states_provenance_and_templating(sample_dir):
    meta = json.loads((sample_dir / "metadata.json").read_text())
    assert "tissue is real" in meta["notice"] and "templated" in meta["notice"]
    assert "Research use only" in meta["notice"]
    assert "CC0" in meta["sources"]["hne"]["licence"]
    assert "cmu_small_region" in meta["sources"]["hne"]["provenance"]
    card = (sample_dir / "README.md").read_text()
    assert meta["fingerprint"] in card


def test_deterministic_for_a_seed(tmp_path):
    small = dict(raw_videos=0, stage0_images=2, stage1_images=0, stage2_clips=1, stage3_videos=1, test_videos=0)
    a = build_sample(SampleConfig(out=str(tmp_path / "a"), seed=5, **small))
    b = build_sample(SampleConfig(out=str(tmp_path / "b"), seed=5, **small))
    c = build_sample(SampleConfig(out=str(tmp_path / "c"), seed=6, **small))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert (tmp_path / "a" / "stage2_clip_sft.json").read_bytes() == (
        tmp_path / "b" / "stage2_clip_sft.json"
    ).read_bytes()


def test_sample_command_writes_the_corpus(tmp_path, venv_bin, subprocess_env):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            venv_bin / "vidrip",
            "sample",
            "--out",
            str(out),
            "--seed",
            "1",
            "raw_videos=0",
            "stage0_images=1",
            "stage1_images=1",
            "stage2_clips=1",
            "stage3_videos=1",
            "test_videos=1",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"sample written to {out}" in proc.stdout
    assert json.loads((out / "metadata.json").read_text())["config"]["seed"] == 1
