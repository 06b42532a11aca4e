"""Burned-in text: read it on keyframes with OCR, keep it as metadata, and inpaint it out of every frame.

Teaching videos carry captions, labels and slide titles burned into the picture; the paper removes
them (docTR + inpainting) and gives the recognised text to the instruction-writing LLM. Two OCR
backends behind :class:`TextReader`:

- ``rapidocr`` (default): PP-OCRv4 detection + recognition, real weights shipped in
  ``rapidocr-onnxruntime``;
- ``doctr`` (the design brief's choice): built from its architectures with
  ``pretrained_backbone=False`` (docTR's default download fails offline and leaves 0-byte files);
  real weights load from ``doctr_det_weights`` / ``doctr_reco_weights`` (state dicts) when given.

Only keyframes judged ``ok`` by detection are read. Each clip frame is inpainted (OpenCV, Telea) under
the text boxes of the keyframes before and after it, and under a small presenter picture-in-picture
when ``mask_presenter``. With ``verify``, the inpainted keyframes are read again: the counts before
and after go to the run's metrics.

    ds.map_batches(TextInpaint, fn_constructor_args=(TextConfig(),), batch_size=8, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import EMPTY_FRAMES, batch_rows, guarded_batch, rows_batch

__all__ = ["TextBox", "TextConfig", "TextInpaint", "TextReader", "inpaint_boxes", "make_reader"]

PREVIEW_WIDTH = 160


class TextConfig(StrictConfig):
    """OCR backend and inpainting."""

    backend: Literal["rapidocr", "doctr"] = "rapidocr"
    doctr_det_arch: str = "db_mobilenet_v3_large"
    doctr_reco_arch: str = "crnn_mobilenet_v3_small"
    doctr_det_weights: str | None = None
    doctr_reco_weights: str | None = None
    min_score: float = Field(default=0.5, ge=0, le=1, description="recognition confidence to keep a box")
    dilate: int = Field(default=3, ge=0, description="pixels added around each box before inpainting")
    inpaint_radius: int = Field(default=3, ge=1)
    mask_presenter: bool = True
    verify: bool = True
    threads: int = Field(default=1, ge=1, description="OCR threads per actor (one per CPU the actor holds)")


@dataclass(frozen=True)
class TextBox:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 pixels
    text: str
    score: float


class TextReader:
    """OCR: RGB images in, text boxes out."""

    def read(self, images: list[np.ndarray]) -> list[list[TextBox]]:
        raise NotImplementedError


class RapidOCRReader(TextReader):
    def __init__(self, min_score: float, threads: int):
        from rapidocr_onnxruntime import RapidOCR

        # burned-in captions are upright: no angle classifier
        self.engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1, use_cls=False)
        self.min_score = min_score

    def read(self, images: list[np.ndarray]) -> list[list[TextBox]]:
        out = []
        for im in images:
            result, _ = self.engine(np.ascontiguousarray(im[..., ::-1]), use_cls=False)
            boxes = []
            for points, text, score in result or []:
                pts = np.asarray(points, dtype=np.float32)
                if float(score) >= self.min_score:
                    x0, y0 = pts.min(axis=0).tolist()
                    x1, y1 = pts.max(axis=0).tolist()
                    boxes.append(TextBox((x0, y0, x1, y1), str(text), float(score)))
            out.append(boxes)
        return out


class DocTRReader(TextReader):
    def __init__(self, cfg: TextConfig):
        import torch
        from doctr.models import detection, ocr_predictor, recognition

        torch.set_num_threads(cfg.threads)
        det = getattr(detection, cfg.doctr_det_arch)(pretrained=False, pretrained_backbone=False)
        reco = getattr(recognition, cfg.doctr_reco_arch)(pretrained=False, pretrained_backbone=False)
        for model, path in ((det, cfg.doctr_det_weights), (reco, cfg.doctr_reco_weights)):
            if path is not None:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.predictor = ocr_predictor(det_arch=det, reco_arch=reco, pretrained=False)
        self.min_score = cfg.min_score

    def read(self, images: list[np.ndarray]) -> list[list[TextBox]]:
        if not images:
            return []
        doc = self.predictor([np.ascontiguousarray(im) for im in images])
        out = []
        for im, page in zip(images, doc.pages, strict=True):
            h, w = im.shape[:2]
            boxes = []
            for block in page.blocks:
                for line in block.lines:
                    words = [wd for wd in line.words if wd.confidence >= self.min_score]
                    if not words:
                        continue
                    (x0, y0), (x1, y1) = line.geometry
                    score = float(np.mean([wd.confidence for wd in words]))
                    boxes.append(TextBox((x0 * w, y0 * h, x1 * w, y1 * h), " ".join(wd.value for wd in words), score))
            out.append(boxes)
        return out


def make_reader(cfg: TextConfig) -> TextReader:
    return RapidOCRReader(cfg.min_score, cfg.threads) if cfg.backend == "rapidocr" else DocTRReader(cfg)


def inpaint_boxes(frame: np.ndarray, boxes, dilate: int, radius: int) -> np.ndarray:
    """``frame`` with the pixels under ``boxes`` (x0, y0, x1, y1) filled in from their surroundings."""
    if not boxes:
        return frame
    h, w = frame.shape[:2]
    mask = np.zeros((h, w), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[
            max(0, int(y0) - dilate) : min(h, int(np.ceil(y1)) + dilate),
            max(0, int(x0) - dilate) : min(w, int(np.ceil(x1)) + dilate),
        ] = 255
    return cv2.inpaint(np.ascontiguousarray(frame), mask, radius, cv2.INPAINT_TELEA)


def _thumb(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (PREVIEW_WIDTH, max(2, round(h * PREVIEW_WIDTH / w))), interpolation=cv2.INTER_AREA)


def _annotated(frame: np.ndarray, detection: dict, texts: list[TextBox]) -> np.ndarray:
    out = frame.copy()
    boxes = [(detection["tissue_box"], (0, 200, 0))] if detection["tissue_box"] else []
    boxes += [(p, (220, 0, 0)) for p in detection["persons"]] + [(t.box, (255, 200, 0)) for t in texts]
    for box, colour in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
    return out


class TextInpaint:
    """Ray Data step (``map_batches``) after detection: OCR on ``ok`` keyframes, inpainting of all frames.

    Adds ``state["screen_text"]``, ``state["text_boxes_before"/"_after"]`` and a ``preview`` column
    (the middle keyframe: annotated original and inpainted, for the contact sheet).
    """

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.reader = make_reader(cfg)

    def _masks(self, n: int, keyframes: list[int], per_key: list[list[tuple]]) -> list[list[tuple]]:
        """Boxes to inpaint in each frame: those of the keyframes before and after it."""
        out = []
        for f in range(n):
            prev = [i for i, k in enumerate(keyframes) if k <= f][-1:] or [0]
            nxt = [i for i, k in enumerate(keyframes) if k >= f][:1] or [len(keyframes) - 1]
            out.append(list({b for i in {prev[0], nxt[0]} for b in per_key[i]}))
        return out

    def __call__(self, batch: dict) -> dict:
        rows = batch_rows(batch)
        for row in rows:
            row["preview"] = EMPTY_FRAMES

        def step(rows: list[dict], states: list[dict]) -> None:
            jobs = [
                (r, k)
                for r, st in enumerate(states)
                for k, det in zip(st["keyframes"], st["detections"], strict=True)
                if det["label"] == "ok"
            ]
            found = self.reader.read([rows[r]["frames"][k] for r, k in jobs])
            texts: dict[tuple[int, int], list[TextBox]] = dict(zip(jobs, found, strict=True))
            after_jobs = []
            for r, (row, st) in enumerate(zip(rows, states, strict=True)):
                keys = st["keyframes"]
                per_key = []
                for k, det in zip(keys, st["detections"], strict=True):
                    boxes = [t.box for t in texts.get((r, k), [])]
                    if self.cfg.mask_presenter and det["label"] == "ok":
                        boxes += [tuple(p) for p in det["persons"]]
                    per_key.append(boxes)
                masks = self._masks(len(row["frames"]), keys, per_key)
                original = row["frames"]
                frames = np.stack(
                    [
                        inpaint_boxes(f, m, self.cfg.dilate, self.cfg.inpaint_radius)
                        for f, m in zip(original, masks, strict=True)
                    ]
                )
                seen = [t for k in keys for t in texts.get((r, k), [])]
                st["screen_text"] = list(dict.fromkeys(t.text for t in seen))
                st["text_boxes_before"] = len(seen)
                ok_keys = [k for k, det in zip(keys, st["detections"], strict=True) if det["label"] == "ok"]
                after_jobs += [(r, k) for k in ok_keys if texts.get((r, k))]
                mid = ok_keys[len(ok_keys) // 2] if ok_keys else keys[len(keys) // 2]
                det = st["detections"][keys.index(mid)]
                row["preview"] = np.stack(
                    [_thumb(_annotated(original[mid], det, texts.get((r, mid), []))), _thumb(frames[mid])]
                )
                row["frames"] = frames
            if self.cfg.verify:
                again = self.reader.read([rows[r]["frames"][k] for r, k in after_jobs])
                for st in states:
                    st["text_boxes_after"] = 0
                for (r, _), boxes in zip(after_jobs, again, strict=True):
                    states[r]["text_boxes_after"] += len(boxes)

        return rows_batch(guarded_batch("text", rows, step))
