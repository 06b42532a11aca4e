"""The tissue/person detector ("YOLO-Path"): labels from the truth files, hold-out rule, and a real fine-tune.

The fine-tune runs once for this module (about 40 s on 2 CPU cores) on the one-video sample, with the
fast settings of conftest.FAST_DETECTOR, under the session's network guard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from pydantic import ValidationError

from vidrip.config import load_config
from vidrip.curate.detector_train import (
    DETECTOR_CLASSES,
    DetectorTrainConfig,
    DetectorWeightsError,
    build_detector_dataset,
    frame_labels,
    holdout_split,
    load_detector,
)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0


# ------------------------------------------------------------------------------------------- fast unit tests


def test_labels_are_clipped_and_degenerate_boxes_dropped():
    frame = {"tissue_box": [-10, 20, 330, 220], "presenter_box": [300, 100, 301, 140]}
    assert frame_labels(frame, 320, 240) == [(1, 0.5, 0.5, 1.0, 200 / 240)]
    frame = {"tissue_box": None, "presenter_box": [0, 0, 320, 240]}
    assert frame_labels(frame, 320, 240) == [(0, 0.5, 0.5, 1.0, 1.0)]
    assert frame_labels({"tissue_box": [400, 0, 500, 100], "presenter_box": None}, 320, 240) == []


def test_holdout_takes_whole_videos_when_there_are_several_else_every_kth_frame():
    frames = {"a": [0, 2, 4], "b": [0, 2], "c": [0, 2]}
    train, val = holdout_split(["b", "a", "c"], frames, 0.25)
    assert set(train) == {"a", "b"} and val == {"c": [0, 2]}
    train, val = holdout_split(["a", "b"], {"a": [0], "b": [1]}, 0.9)  # never every video
    assert set(train) == {"a"} and set(val) == {"b"}
    train, val = holdout_split(["a"], {"a": list(range(8))}, 0.25)
    assert val == {"a": [2, 6]} and train == {"a": [0, 1, 3, 4, 5, 7]}


def test_config_checks_image_size_and_device():
    assert DetectorTrainConfig().imgsz % 32 == 0
    with pytest.raises(ValidationError):
        DetectorTrainConfig(imgsz=300)
    with pytest.raises(ValidationError):
        DetectorTrainConfig(device="tpu")


def test_shipped_config_loads(repo):
    cfg = load_config(DetectorTrainConfig, repo / "jobs/configs/train_detector.yaml")
    assert cfg.sample == "work/sample" and cfg.base_weights is None and cfg.register_as


def test_dataset_has_images_labels_and_data_yaml(sample_dir, tmp_path):
    data = build_detector_dataset(sample_dir, tmp_path / "ds", frame_stride=10, val_fraction=0.25)
    truth = json.loads(next((sample_dir / "raw").glob("*.truth.json")).read_text())
    n = len(range(0, truth["num_frames"], 10))
    assert data.train_images + data.val_images == n and data.val_images == len(range(2, n, 4))
    assert data.val_videos == ()  # one video: frames are held out, not videos
    spec = data.data_yaml.read_text()
    assert "person" in spec and "tissue" in spec
    first = sorted((data.root / "labels" / "train").glob("*.txt"))[0]  # frame 0: the presenter, full frame
    assert first.read_text().split() == ["0", "0.500000", "0.500000", "1.000000", "1.000000"]


def test_load_detector_refuses_the_fall_detection_weights():
    from vidrip.assets import PERSON_DETECTOR, asset_path

    path = asset_path(PERSON_DETECTOR)
    with pytest.raises(DetectorWeightsError) as exc:
        load_detector(path)
    msg = str(exc.value)
    assert str(path) in msg and "Normal" in msg and "Fall" in msg and "person" in msg


# ------------------------------------------------------------------------------------------- the fine-tune


@pytest.fixture
def trained(trained_detector):
    """The session's detector (conftest trains it once, with FAST_DETECTOR)."""
    return trained_detector.result, trained_detector.uri


def test_training_restores_what_ultralytics_changes_process_wide(trained_detector):
    # ultralytics sets 1 torch thread on 2 cores and deterministic algorithms; train_detector undoes both
    assert trained_detector.threads_after == trained_detector.threads_before
    assert not trained_detector.deterministic_after


def test_trained_weights_have_the_detector_classes(trained):
    result, _ = trained
    assert result.weights.is_file() and result.weights.parent.name == "weights"
    model = load_detector(result.weights)
    assert tuple(model.names[i] for i in sorted(model.names)) == DETECTOR_CLASSES
    assert result.train_images > result.val_images > 0


def test_map50_weights_and_version_are_tracked(trained, trained_detector):
    result, uri = trained
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["map50"] == pytest.approx(result.map50) and result.map50 > 0.5
    assert run.data.metrics["map50_tissue"] == pytest.approx(result.map50_tissue)
    assert not math.isnan(result.map50_person)
    assert len(client.get_metric_history(result.run_id, "epoch/mAP50")) == trained_detector.epochs
    assert "weights/best.pt" in {a.path for a in client.list_artifacts(result.run_id, "weights")}
    [version] = client.search_model_versions("name = 'vidrip-tissue-detector'")
    assert version.run_id == result.run_id and Path(version.source).is_file()


def test_detects_tissue_and_presenter_on_held_out_frames(trained, sample_dir):
    result, _ = trained
    model = load_detector(result.weights)
    truth = {p.name.removesuffix(".truth.json"): json.loads(p.read_text()) for p in (sample_dir / "raw").glob("*.json")}
    checked = {"tissue": [], "presenter": []}
    for image in sorted((result.dataset / "images" / "val").glob("*.jpg")):
        video, frame = image.stem.rsplit("_", 1)
        gt = truth[video]["frames"][int(frame)]
        boxes = model.predict(str(image), imgsz=320, device="cpu", verbose=False)[0].boxes
        found = {
            c: [b for b, k in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), strict=True) if k == i]
            for i, c in enumerate(DETECTOR_CLASSES)
        }
        if gt["tissue_box"]:
            checked["tissue"].append(max((_iou(b, gt["tissue_box"]) for b in found["tissue"]), default=0.0))
        if gt["presenter_dominant"]:
            checked["presenter"].append(max((_iou(b, gt["presenter_box"]) for b in found["person"]), default=0.0))
    assert checked["tissue"] and checked["presenter"], "the held-out frames should hold both kinds of shot"
    assert sum(iou > 0.5 for iou in checked["tissue"]) >= 0.8 * len(checked["tissue"]), checked["tissue"]
    assert all(iou > 0.5 for iou in checked["presenter"]), checked["presenter"]
