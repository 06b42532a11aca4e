"""The whole curation pipeline on real Ray, on the sample's raw video mixed with bad inputs.

One run serves most tests (module fixture); then a re-run (nothing redone, no LLM call) and a
partial re-run (a lost part file: only that input is redone).
"""

from __future__ import annotations

import json

import av
import mlflow
import numpy as np
import pandas as pd
import pytest

from bad_videos import write_bad_inputs
from chat_server import ChatServer
from vidrip.curate.pipeline import CurateConfig, run_curation
from vidrip.data.dataset import InstructionDataset
from vidrip.data.schema import InstructionRecord, load_records
from vidrip.data.video import FramePolicy
from vidrip.tracking import TrackingConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm():
    with ChatServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def curated(ray_head, sample_dir, detector_weights, llm, tmp_path_factory):
    import ray

    from vidrip.runtime import connect

    root = tmp_path_factory.mktemp("curate")
    bad = root / "inputs"
    expected = write_bad_inputs(bad, sample_dir / "raw" / "teach_00.mp4")
    cfg = CurateConfig(
        inputs=[str(sample_dir / "raw"), str(bad)],
        out=str(root / "out"),
        workdir=str(root),
        licence="CC0-1.0",
        detect={"weights": str(detector_weights)},
        llm={"base_url": llm.base_url, "model": "fake-llm"},
        tracking=TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}"),
    )
    connect(ray_head.config, ray_head.workdir)
    try:
        result = run_curation(cfg, progress=False)
        requests = len(llm.requests)
        yield cfg, result, expected, requests
    finally:
        ray.shutdown()


def _parts(out) -> dict[str, dict]:
    """Part files by input file name."""
    parts = [json.loads(f.read_text()) for f in (out / "parts").glob("*.json")]
    return {p["source"].rsplit("/", 1)[-1]: p for p in parts}


def test_every_input_ends_as_outputs_or_a_reject_with_its_reason(curated):
    _, result, expected, _ = curated
    parts = _parts(result.out)
    assert set(parts) == {"teach_00.mp4", *expected}
    for name, reason in expected.items():
        if reason is None:
            assert parts[name]["reject"] is None and parts[name]["clips"], name
        else:
            assert parts[name]["reject"] is not None and reason in parts[name]["reject"]["reason"], parts[name]
    rejects = pd.read_parquet(result.out / "rejects.parquet")
    whole = rejects[rejects["start"].isna()]
    assert sorted(n.rsplit("/", 1)[-1] for n in whole["source"]) == sorted(
        n for n, r in expected.items() if r is not None
    )
    assert (whole["reason"].str.len() > 0).all()
    assert parts["teach_00.mp4"]["reject"] is None and len(parts["teach_00.mp4"]["clips"]) >= 2


def test_presenter_frames_are_dropped_and_clips_are_cropped_muted_tissue(curated, sample_dir):
    _, result, _, _ = curated
    part = _parts(result.out)["teach_00.mp4"]
    truth = json.loads((sample_dir / "raw" / "teach_00.truth.json").read_text())
    presenter_end = truth["cuts"][0] / truth["fps"]
    drops = [d for d in part["drops"] if d["reason"] == "presenter fills the view"]
    assert drops and drops[0]["start"] == 0.0 and drops[0]["end"] >= presenter_end - 0.5
    for clip in part["clips"]:
        assert clip["start"] >= presenter_end - 1e-6  # no clip shows the presenter's shot
        assert clip["width"] < truth["width"] and clip["height"] < truth["height"]  # cropped to the slide viewer
        with av.open(str(result.out / clip["video"])) as c:
            assert len(c.streams.audio) == 0 and c.streams.video[0].average_rate == 2
            assert c.streams.video[0].codec_context.name == "h264"
    table = pd.read_parquet(result.out / "clips.parquet")
    assert set(table["clip_id"]) == {c["clip_id"] for p in _parts(result.out).values() for c in p["clips"]}
    assert table["transcript"].str.len().gt(0).any()
    for crop, w, h in zip(table["crop"], table["width"], table["height"], strict=True):
        assert crop[2] - crop[0] == w and crop[3] - crop[1] == h


def test_ocr_finds_no_text_after_inpainting(curated):
    _, result, _, _ = curated
    assert result.metrics["text_boxes_before"] > 0
    assert result.metrics["text_boxes_after"] == 0
    screen = {t for c in _parts(result.out)["teach_00.mp4"]["clips"] for t in c["screen_text"]}
    assert any("overview" in t.lower() for t in screen)


def test_instruction_files_validate_and_load_for_training(curated):
    from vidrip.model.collate import Collator
    from vidrip.model.loading import ModelConfig, load_processor

    _, result, _, _ = curated
    for name in ("clip_instructions.json", "video_instructions.json"):
        loaded = load_records(result.out / name, InstructionRecord, media_root=result.out)
        assert loaded.records and not loaded.errors, name
    videos = json.loads((result.out / "video_instructions.json").read_text())
    assert all(r["conversations"][1]["value"].splitlines()[-1].startswith("Diagnosis: ") for r in videos)
    ds = InstructionDataset.from_file(
        result.out / "clip_instructions.json", result.out, frames=FramePolicy(rule="fps", fps=1), size=32
    )
    batch = Collator(load_processor(ModelConfig(preset="tiny")))([ds[0]])
    assert batch["pixel_values_videos"].shape[1] >= 2 and (batch["labels"] != -100).any()


def test_dataset_card_and_croissant(curated):
    _, result, _, _ = curated
    card = (result.out / "README.md").read_text()
    assert "Research use only, not for clinical decisions" in card and "CC0-1.0" in card
    assert result.metrics["croissant_records.clips"] == result.counts["clips"]


def test_mlflow_run_has_counts_drops_seconds_and_contact_sheet(curated):
    cfg, result, _, _ = curated
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(result.run_id)
    m = run.data.metrics
    assert m["inputs"] == 7 and m["inputs_rejected"] == 5
    assert m["dropped_seconds.presenter_fills_the_view"] > 0 and m["rejected_inputs_by_reason.too_short"] == 1
    for step in ("probe", "transcribe", "shots", "detect", "text", "clips", "instruct"):
        assert m[f"seconds.{step}"] > 0, step
    assert 0 < m["heavy_model_frame_share"] <= 0.5
    assert (m["count.probe.in"], m["count.probe.out"]) == (7, 3)  # four bad files stop at probe
    assert m["count.shots.in"] == m["count.transcribe.out"] and m["count.shots.out"] >= 4
    assert m["count.detect.out"] <= m["count.detect.in"] and m["count.trim.out"] < m["count.trim.in"]
    assert m["count.clips.out"] == result.counts["clips"] and m["count.instruct.out"] == m["clips_kept"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "contact_sheet.png" in artifacts
    from PIL import Image

    sheet = np.asarray(Image.open(result.out / "contact_sheet.png"))
    assert sheet.shape[1] >= 3 * 160 and sheet.std() > 10


def test_rerun_skips_everything_and_pays_no_llm_call(curated, llm):
    cfg, first, _, requests = curated
    before = {f.name: f.stat().st_mtime_ns for f in (first.out / "clips").iterdir()}
    again = run_curation(cfg, progress=False)  # still connected to Ray by the module fixture
    assert again.skipped == again.inputs == first.inputs
    assert len(llm.requests) == requests
    assert again.counts == first.counts
    assert {f.name: f.stat().st_mtime_ns for f in (first.out / "clips").iterdir()} == before
    # a lost part file: only that input is processed again, its LLM answers come from the cache
    lost = next((first.out / "parts").glob("teach_00-*.json"))
    lost.unlink()
    third = run_curation(cfg, progress=False)
    assert third.skipped == first.inputs - 1 and lost.is_file()
    assert len(llm.requests) == requests and third.counts == first.counts
