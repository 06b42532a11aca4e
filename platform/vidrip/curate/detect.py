"""Tissue and presenter detection on keyframes with a YOLO detector (the paper's "YOLO-Path").

The detector has two classes, ``person`` and ``tissue`` (trained by ``vidrip curate train-detector``
from the shipped YOLOv8s person detector). Each keyframe gets a label:

- ``presenter fills the view``: a person box covers at least ``presenter_fraction`` of the frame;
- ``no tissue``: no tissue box, or one smaller than ``min_tissue_fraction`` of the frame;
- ``ok``: otherwise; its tissue box is where the clip will be cropped, and smaller person boxes
  (a picture-in-picture presenter) are kept so the text step can inpaint them away.

Batched: every keyframe of every shot in a Ray Data batch goes through one ``predict`` call; on a
GPU node the actor asks for ``num_gpus=1`` and runs there.

    detect = Detect(DetectConfig(weights="work/detector/weights/best.pt"))
    batch = detect(batch)        # ds.map_batches(Detect, batch_size=8, compute=ActorPoolStrategy(...))
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import batch_rows, guarded_batch, rows_batch

__all__ = ["Detect", "DetectConfig", "judge_keyframe"]

OK, NO_TISSUE, PRESENTER = "ok", "no tissue", "presenter fills the view"


class DetectConfig(StrictConfig):
    """The detector and how its boxes are judged."""

    weights: str = Field(
        default="work/detector/weights/best.pt",
        description="trained tissue/person detector (.pt); `vidrip curate train-detector` writes it",
    )
    imgsz: int = Field(default=320, ge=32, multiple_of=32)
    conf: float = Field(default=0.25, gt=0, lt=1)
    presenter_fraction: float = Field(default=0.3, gt=0, le=1)
    min_tissue_fraction: float = Field(default=0.05, ge=0, le=1)
    batch_size: int = Field(default=2, ge=1, description="shots per Ray Data batch (detect, text, trim, clips)")
    threads: int = Field(default=1, ge=1, description="torch CPU threads per actor")
    device: Literal["auto", "cpu", "cuda"] = "auto"


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def judge_keyframe(tissue: list[list[float]], persons: list[list[float]], width: int, height: int, cfg) -> dict:
    """Label one keyframe from its tissue and person boxes (pixels)."""
    frame = float(width * height)
    box = None
    if tissue:
        t = np.asarray(tissue)
        box = [float(t[:, 0].min()), float(t[:, 1].min()), float(t[:, 2].max()), float(t[:, 3].max())]
    biggest_person = max((_area(p) for p in persons), default=0.0) / frame
    if biggest_person >= cfg.presenter_fraction:
        label = PRESENTER
    elif box is None or _area(box) / frame < cfg.min_tissue_fraction:
        label = NO_TISSUE
    else:
        label = OK
    return {
        "label": label,
        "tissue_box": [round(v, 1) for v in box] if box else None,
        "persons": [[round(float(v), 1) for v in p] for p in persons],
        "person_fraction": round(biggest_person, 4),
    }


class Detect:
    """Ray Data step (``map_batches``): ``state["detections"]``, one judgement per keyframe."""

    def __init__(self, cfg: DetectConfig):
        from vidrip.curate.detector_train import DETECTOR_CLASSES, load_detector

        self.cfg = cfg
        self.model = load_detector(cfg.weights)
        self.tissue_id = DETECTOR_CLASSES.index("tissue")
        self.person_id = DETECTOR_CLASSES.index("person")
        import torch

        torch.set_num_threads(cfg.threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device

    def predict(self, images: list[np.ndarray]) -> list[tuple[list, list]]:
        """(tissue boxes, person boxes) per RGB image."""
        if not images:
            return []
        results = self.model.predict(
            [im[..., ::-1] for im in images],  # ultralytics takes BGR arrays
            imgsz=self.cfg.imgsz,
            conf=self.cfg.conf,
            device=self.device,
            batch=len(images),
            verbose=False,
        )
        out = []
        for r in results:
            boxes = r.boxes.xyxy.cpu().numpy().tolist()
            cls = r.boxes.cls.cpu().numpy().astype(int).tolist()
            out.append(
                (
                    [b for b, c in zip(boxes, cls, strict=True) if c == self.tissue_id],
                    [b for b, c in zip(boxes, cls, strict=True) if c == self.person_id],
                )
            )
        return out

    def __call__(self, batch: dict) -> dict:
        rows = batch_rows(batch)

        def step(rows: list[dict], states: list[dict]) -> None:
            images = [row["frames"][k] for row, st in zip(rows, states, strict=True) for k in st["keyframes"]]
            found = iter(self.predict(images))
            for row, st in zip(rows, states, strict=True):
                h, w = row["frames"].shape[1:3]
                st["detections"] = [judge_keyframe(*next(found), w, h, self.cfg) for _ in st["keyframes"]]

        return rows_batch(guarded_batch("detect", rows, step))
