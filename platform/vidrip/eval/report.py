"""The evaluation's numbers: per-model means, the paper's table (Markdown, CSV), a bar chart.

The paper's table has exactly these columns: ``Model | Context | Correct | Detail | Avg | Norm-Avg``, with
Avg the mean of the three criteria and Norm-Avg = Avg / 5 × 100. A criterion's score is the mean over the
items it scored, zeros of failed judgements included (as the released task computes it); how many of
those zeros are judge failures, and how many are failed predictions, is reported beside it. Temporal and
consistency, when asked for, get their own table; so do the judge-free metrics.

    rows = aggregate(models, judgements, samples, criteria)
    write_reports(rows, header_lines, out_dir)   # table.md, table.csv, chart.png
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vidrip.eval.judge import Judgement
from vidrip.eval.metrics import SampleMetrics
from vidrip.eval.prompts import CRITERION_TITLES, PAPER_CRITERIA

__all__ = ["ModelRow", "aggregate", "markdown", "write_reports"]


@dataclass
class CriterionScore:
    mean: float
    n: int
    judge_failures: int
    prediction_failures: int


@dataclass
class ModelRow:
    """One model's numbers."""

    model: str
    criteria: dict[str, CriterionScore] = field(default_factory=dict)
    similarity: float | None = None
    diagnosis_agreement: float | None = None
    diagnosis_n: int = 0
    diagnosis_stated: float | None = None
    predictions: int = 0
    prediction_failures: int = 0

    @property
    def avg(self) -> float | None:
        """Mean of the paper's criteria that were scored."""
        scores = [self.criteria[c].mean for c in PAPER_CRITERIA if c in self.criteria]
        return sum(scores) / len(scores) if scores else None

    @property
    def norm_avg(self) -> float | None:
        return None if self.avg is None else self.avg / 5 * 100

    def metrics(self) -> dict[str, float]:
        """Every number, flat, for MLflow."""
        out: dict[str, float] = {}
        for name, c in self.criteria.items():
            out[name] = c.mean
            out[f"{name}_judge_failures"] = c.judge_failures
        if self.avg is not None:
            out["avg"], out["norm_avg"] = self.avg, self.norm_avg
        for name in ("similarity", "diagnosis_agreement", "diagnosis_stated"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["prediction_failures"] = self.prediction_failures
        return out


def aggregate(
    models: Sequence[str],
    judgements: Sequence[Judgement],
    samples: Sequence[SampleMetrics],
    criteria: Sequence[str],
    prediction_failures: dict[str, int] | None = None,
    predictions: dict[str, int] | None = None,
) -> list[ModelRow]:
    """One :class:`ModelRow` per model, in ``models`` order."""
    rows = []
    for model in models:
        row = ModelRow(model)
        row.prediction_failures = (prediction_failures or {}).get(model, 0)
        row.predictions = (predictions or {}).get(model, 0)
        for criterion in criteria:
            js = [j for j in judgements if j.model == model and j.criterion == criterion]
            if js:
                row.criteria[criterion] = CriterionScore(
                    mean=sum(j.score for j in js) / len(js),
                    n=len(js),
                    judge_failures=sum(j.failed for j in js),
                    prediction_failures=sum(j.prediction_failed for j in js),
                )
        mine = [s for s in samples if s.model == model]
        sims = [s.similarity for s in mine if s.similarity is not None]
        row.similarity = sum(sims) / len(sims) if sims else None
        agree = [s.diagnosis_agrees for s in mine if s.diagnosis_agrees is not None]
        row.diagnosis_n = len(agree)
        row.diagnosis_agreement = sum(agree) / len(agree) if agree else None
        with_ref = [s for s in mine if s.reference_diagnosis is not None]
        row.diagnosis_stated = (
            sum(s.predicted_diagnosis is not None for s in with_ref) / len(with_ref) if with_ref else None
        )
        rows.append(row)
    return rows


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def paper_table(rows: Sequence[ModelRow]) -> list[str]:
    """``Model | Context | Correct | Detail | Avg | Norm-Avg``."""
    header = ["Model", *(CRITERION_TITLES[c] for c in PAPER_CRITERIA), "Avg", "Norm-Avg"]
    body = [
        [
            r.model,
            *(_f(r.criteria[c].mean) if c in r.criteria else "—" for c in PAPER_CRITERIA),
            _f(r.avg),
            _f(r.norm_avg, 1),
        ]
        for r in rows
    ]
    return _table(header, body)


def markdown(rows: Sequence[ModelRow], header_lines: Sequence[str], criteria: Sequence[str], judged: bool) -> str:
    """The whole report: header lines, the paper's table, extra criteria, failures, judge-free metrics."""
    out = [*header_lines, ""]
    if judged:
        out += paper_table(rows)
        extra = [c for c in criteria if c not in PAPER_CRITERIA]
        if extra:
            out += ["", *_table(["Model", *(CRITERION_TITLES[c] for c in extra)], _extra_body(rows, extra))]
        out += ["", "Judge failures (no usable score after the retries; counted as 0 above) / failed predictions:"]
        head = ["Model", *(CRITERION_TITLES[c] for c in criteria), "Failed predictions"]
        body = [
            [
                r.model,
                *(f"{r.criteria[c].judge_failures}/{r.criteria[c].n}" if c in r.criteria else "—" for c in criteria),
                f"{r.prediction_failures}/{r.predictions}",
            ]
            for r in rows
        ]
        out += _table(head, body)
    else:
        out += ["No judge configured: judge-free metrics only."]
    out += ["", "Judge-free metrics:"]
    body = [
        [
            r.model,
            _f(r.similarity, 3),
            f"{_f(r.diagnosis_agreement, 2)} (n={r.diagnosis_n})",
            _f(r.diagnosis_stated, 2),
        ]
        for r in rows
    ]
    out += _table(["Model", "Similarity (MiniLM)", "Diagnosis agreement", "Diagnosis stated"], body)
    return "\n".join(out) + "\n"


def _extra_body(rows: Sequence[ModelRow], extra: Sequence[str]) -> list[list[str]]:
    return [[r.model, *(_f(r.criteria[c].mean) if c in r.criteria else "—" for c in extra)] for r in rows]


def write_csv(rows: Sequence[ModelRow], criteria: Sequence[str], path: Path) -> None:
    """One line per model: the paper's columns first, then everything else."""
    names = list(PAPER_CRITERIA) + [c for c in criteria if c not in PAPER_CRITERIA]
    header = ["Model", *(CRITERION_TITLES[c] for c in names), "Avg", "Norm-Avg"]
    header += [f"{CRITERION_TITLES[c]} judge failures" for c in names]
    header += ["Failed predictions", "Similarity", "Diagnosis agreement", "Diagnosis n", "Diagnosis stated"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            scores = [r.criteria[c].mean if c in r.criteria else "" for c in names]
            fails = [r.criteria[c].judge_failures if c in r.criteria else "" for c in names]
            w.writerow(
                [
                    r.model,
                    *scores,
                    "" if r.avg is None else r.avg,
                    "" if r.norm_avg is None else r.norm_avg,
                    *fails,
                    r.prediction_failures,
                    "" if r.similarity is None else r.similarity,
                    "" if r.diagnosis_agreement is None else r.diagnosis_agreement,
                    r.diagnosis_n,
                    "" if r.diagnosis_stated is None else r.diagnosis_stated,
                ]
            )


def write_chart(rows: Sequence[ModelRow], criteria: Sequence[str], path: Path, title: str) -> None:
    """Grouped bars: each criterion's mean (0–5) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [c for c in criteria if any(c in r.criteria for r in rows)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) * max(1, len(rows)) / 2 + 2), 3.6), dpi=120)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(names))
    for i, r in enumerate(rows):
        values = [r.criteria[c].mean if c in r.criteria else 0.0 for c in names]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=r.model)
    ax.set_xticks(x, [CRITERION_TITLES[c] for c in names])
    ax.set_ylim(0, 5)
    ax.set_ylabel("judge score (0–5)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(
    rows: Sequence[ModelRow],
    header_lines: Sequence[str],
    criteria: Sequence[str],
    judged: bool,
    out: Path,
    chart_title: str = "",
) -> dict[str, Path]:
    """``table.md``, ``table.csv`` and (when judged) ``chart.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv"}
    paths["table_md"].write_text(markdown(rows, header_lines, criteria, judged))
    write_csv(rows, criteria, paths["table_csv"])
    (out / "chart.png").unlink(missing_ok=True)
    if judged:
        paths["chart"] = out / "chart.png"
        write_chart(rows, criteria, paths["chart"], chart_title)
    return paths
