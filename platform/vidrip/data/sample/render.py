"""Render "virtual microscope" shots: a camera moving over a real slide, with the things teaching videos have.

A :class:`Shot` is either the presenter filling the frame, or a camera path over a tissue source shown
in a viewport (a slide viewer's window on a dark desktop): it pans and zooms between two
:class:`View`\\ s. Overlays: a burned-in caption on a dark band, and the presenter as a
picture-in-picture. Each rendered frame comes with its ground truth: where tissue, text and presenter
are, in pixels (``[x0, y0, x1, y1]``, exclusive ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vidrip.data.sample.sources import SOURCES, describe_region, load_source, presenter_image

__all__ = [
    "Caption",
    "Shot",
    "View",
    "field_width_um",
    "magnification_words",
    "pick_roi",
    "region_at",
    "render_shot",
]

DESKTOP = (38, 40, 46)
GLASS = (243, 242, 240)


@dataclass(frozen=True)
class View:
    cx: float  # camera centre in source pixels
    cy: float
    span: float  # source pixels across the viewport width


@dataclass(frozen=True)
class Caption:
    text: str
    start: float  # seconds into the shot
    end: float


@dataclass
class Shot:
    kind: str  # "tissue" or "presenter"
    seconds: float
    source: str | None = None
    start: View | None = None
    end: View | None = None
    viewport: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in frame pixels
    captions: list[Caption] = field(default_factory=list)
    pip: tuple[float, float] | None = None  # presenter picture-in-picture from..to (seconds into the shot)


def field_width_um(source: str, span: float) -> float:
    return span * SOURCES[source].microns_per_pixel


def magnification_words(source: str, span: float) -> str:
    width = field_width_um(source, span)
    if width > 600:
        return "low magnification"
    if width > 200:
        return "medium magnification"
    return "high magnification"


def _interp(a: View, b: View, u: float) -> View:
    u = u * u * (3 - 2 * u)  # ease in/out, as a hand on the stage moves
    span = float(np.exp(np.log(a.span) + (np.log(b.span) - np.log(a.span)) * u))
    return View(a.cx + (b.cx - a.cx) * u, a.cy + (b.cy - a.cy) * u, span)


def _camera(source_img: np.ndarray, view: View, out_w: int, out_h: int) -> np.ndarray:
    """The part of the source the camera sees, resized to ``out_w`` x ``out_h``; glass outside the slide."""
    scale = out_w / view.span
    # affine map from output pixels to source pixels, done by OpenCV in one warp (border = glass)
    m = np.array([[scale, 0, out_w / 2 - view.cx * scale], [0, scale, out_h / 2 - view.cy * scale]], dtype=np.float64)
    return cv2.warpAffine(
        source_img,
        m,
        (out_w, out_h),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=GLASS,
    )


def _tissue_box(view_rgb: np.ndarray, offset: tuple[int, int], block: int = 8) -> list[int] | None:
    """Bounding box of blocks that are mostly tissue (saturated, not glass), in frame coordinates."""
    hsv = cv2.cvtColor(view_rgb, cv2.COLOR_RGB2HSV)
    mask = (hsv[..., 1] > 20) & (hsv[..., 2] < 248)
    h, w = mask.shape
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        return None
    blocks = mask[: hb * block, : wb * block].reshape(hb, block, wb, block).mean(axis=(1, 3)) > 0.3
    if blocks.mean() < 0.02:
        return None
    ys, xs = np.nonzero(blocks)
    ox, oy = offset
    return [
        int(ox + xs.min() * block),
        int(oy + ys.min() * block),
        int(ox + min(w, (xs.max() + 1) * block)),
        int(oy + min(h, (ys.max() + 1) * block)),
    ]


def _presenter(w: int, h: int) -> np.ndarray:
    img = presenter_image()
    ih, iw = img.shape[:2]
    scale = max(w / iw, h / ih)
    resized = cv2.resize(img, (round(iw * scale), round(ih * scale)), interpolation=cv2.INTER_AREA)
    y0 = (resized.shape[0] - h) // 2
    x0 = (resized.shape[1] - w) // 2
    return resized[y0 : y0 + h, x0 : x0 + w]


def _draw_caption(frame: np.ndarray, text: str) -> list[int]:
    h, w = frame.shape[:2]
    scale = max(0.4, h / 480)
    thickness = 1 if h < 400 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = max(4, (w - tw) // 2)
    y = h - max(10, h // 16)
    band = [max(0, x - 6), max(0, y - th - 6), min(w, x + tw + 6), min(h, y + base + 6)]
    roi = frame[band[1] : band[3], band[0] : band[2]]
    roi[:] = (roi.astype(np.float32) * 0.25).astype(np.uint8)
    cv2.putText(frame, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return band


def render_shot(shot: Shot, width: int, height: int, fps: int) -> tuple[list[np.ndarray], list[dict]]:
    """Frames (RGB uint8) and per-frame ground truth of one shot."""
    n = max(1, round(shot.seconds * fps))
    frames: list[np.ndarray] = []
    truth: list[dict] = []
    source_img = load_source(shot.source) if shot.kind == "tissue" else None
    pip_w, pip_h = width // 4, height // 4
    pip_img = _presenter(pip_w, pip_h) if shot.pip else None
    for i in range(n):
        t = i / fps
        gt: dict = {
            "t_shot": round(t, 4),
            "tissue_box": None,
            "presenter_box": None,
            "presenter_dominant": False,
            "text": [],
            "view": None,
        }
        if shot.kind == "presenter":
            frame = _presenter(width, height).copy()
            gt["presenter_box"] = [0, 0, width, height]
            gt["presenter_dominant"] = True
        else:
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[:] = DESKTOP
            x0, y0, x1, y1 = shot.viewport or (0, 0, width, height)
            view = _interp(shot.start, shot.end, i / max(1, n - 1))
            frame[y0:y1, x0:x1] = _camera(source_img, view, x1 - x0, y1 - y0)
            gt["tissue_box"] = _tissue_box(frame[y0:y1, x0:x1], (x0, y0))
            gt["view"] = {"cx": round(view.cx, 2), "cy": round(view.cy, 2), "span": round(view.span, 2)}
        if pip_img is not None and shot.pip[0] <= t < shot.pip[1]:
            px0, py0 = width - pip_w - 8, height - pip_h - 8 - height // 8
            frame[py0 - 2 : py0 + pip_h + 2, px0 - 2 : px0 + pip_w + 2] = 255
            frame[py0 : py0 + pip_h, px0 : px0 + pip_w] = pip_img
            gt["presenter_box"] = [px0 - 2, py0 - 2, px0 + pip_w + 2, py0 + pip_h + 2]
        for cap in shot.captions:
            if cap.start <= t < cap.end:
                gt["text"].append({"text": cap.text, "box": _draw_caption(frame, cap.text)})
        frames.append(frame)
        truth.append(gt)
    return frames, truth


def region_at(source: str, view: View, width: int, height: int) -> np.ndarray:
    """What the camera shows at ``view`` (no overlays), for measuring the region a shot ends on."""
    return _camera(load_source(source), view, width, height)


def pick_roi(source: str, span: float, rng: np.random.Generator, min_tissue: float = 0.6) -> View:
    """A view of ``span`` source pixels centred on tissue (the most tissue of 24 random tries)."""
    img = load_source(source)
    h, w = img.shape[:2]
    best, best_frac = None, -1.0
    for _ in range(24):
        cx = float(rng.uniform(span / 2, w - span / 2))
        cy = float(rng.uniform(span * 0.375, h - span * 0.375))
        view = View(cx, cy, span)
        frac = describe_region(region_at(source, view, 96, 72)).tissue_fraction
        if frac > best_frac:
            best, best_frac = view, frac
        if frac >= min_tissue:
            break
    return best
