"""The evaluation job: every model answers the test set, the judge scores the answers, the table is written.

    vidrip eval --config jobs/configs/eval.yaml          # or: python jobs/eval.py --config ...
    result = evaluate(cfg)                               # every model and the judge at their base_url
    result = evaluate(cfg, endpoint)                     # ``endpoint`` stands in for each base_url: null

Evaluation reaches models over HTTP only: deploying an app for ``base_url: null`` (the config's ``serve``
section) is composed by the CLI (``vidrip eval``) or the pipeline, which then pass its endpoint here.

Steps: load the test set (bad records reported and left out, never fatal), ask each model (cached),
score with the judge (cached; failures counted), compute the judge-free metrics, write ``table.md``,
``table.csv``, ``chart.png`` and per-sample JSONL to ``out``, and record it all in one MLflow run (tagged
with each model's revision; every score a metric; the table, judgements and failures as artifacts).
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidrip.data.fingerprint import file_sha256, fingerprint_digests
from vidrip.data.schema import TestRecord, load_records
from vidrip.eval.config import EvalConfig
from vidrip.eval.judge import Judge, Judgement
from vidrip.eval.metrics import SampleMetrics, diagnosis_agrees, extract_diagnosis, similarity_scores
from vidrip.eval.predict import Prediction, model_client, predict
from vidrip.eval.report import ModelRow, aggregate, write_reports
from vidrip.tracking import TAG_PREFIX, Lineage

__all__ = ["EvalResult", "TestSet", "evaluate", "load_test_set"]

log = logging.getLogger(__name__)

PAPER_JUDGE = "gpt-3.5-turbo"


@dataclass
class EvalResult:
    rows: list[ModelRow]
    table: str  # the Markdown report
    paths: dict[str, str]
    run_id: str
    stats: dict[str, dict[str, int]]  # "judge" and each model's request counters
    seconds: dict[str, float]
    skipped_records: list[str] = field(default_factory=list)


@dataclass
class TestSet:
    """The usable test items (the first ``limit``), one line per bad record (left out), the set's fingerprint,
    and each video's sha256 by ``video_name`` (hashed once, for the fingerprint and the prediction cache)."""

    __test__ = False  # not a pytest class

    items: list[TestRecord]
    errors: list[str]
    fingerprint: str
    video_digests: dict[str, str]


def load_test_set(cfg: EvalConfig) -> TestSet:
    """The test set of ``cfg`` (see :class:`TestSet`); bad records are logged and left out."""
    root = cfg.resolved_media_root()
    loaded = load_records(cfg.test_set, TestRecord, media_root=root, on_error="skip")
    errors = [str(e) for e in loaded.errors]
    for line in errors:
        log.warning("test set: %s (left out)", line)
    items = loaded.records[: cfg.limit] if cfg.limit else loaded.records
    if not items:
        raise ValueError(f"{cfg.test_set}: no usable test records" + (f" ({len(errors)} bad)" if errors else ""))
    videos = {item.video_name: (root / item.video_name).resolve() for item in items}
    files = {Path(cfg.test_set).resolve(), *videos.values()}
    shas = {path: file_sha256(path) for path in files}
    common = Path(os.path.commonpath([str(p.parent) for p in files]))
    fingerprint = fingerprint_digests({str(p.relative_to(common)): sha for p, sha in shas.items()})
    return TestSet(items, errors, fingerprint, {name: shas[path] for name, path in videos.items()})


def _header(cfg: EvalConfig, n: int, fingerprint: str, judge_url: str | None) -> list[str]:
    lines = ["# vidrip evaluation (Video-ChatGPT judge metrics, as in ViDRiP-LLaVA). Research use only."]
    if cfg.judge is not None:
        line = f"Judge: {cfg.judge.model} at {judge_url}, temperature 0"
        if cfg.judge.stand_in:
            line += f" (stand-in: {cfg.judge.stand_in}; the paper's judge was {PAPER_JUDGE})"
        lines.append(line)
    frames = sorted({f"{m.num_frames} uniform" if m.num_frames else "as the endpoint samples" for m in cfg.models})
    tokens = sorted({str(m.max_tokens) for m in cfg.models})
    sampling = "greedy" if all(m.temperature == 0 for m in cfg.models) else "sampled"
    lines.append(f"Frames per video: {', '.join(frames)}; max_tokens {', '.join(tokens)}; {sampling}")
    lines.append(f"Test set: {cfg.test_set}, {n} items, fingerprint {fingerprint}")
    return lines


def _judge_free(cfg: EvalConfig, items: list[TestRecord], preds: list[Prediction]) -> list[SampleMetrics]:
    firsts = [p for p in preds if p.which == "question"]
    sims: list[float | None] = [None] * len(firsts)
    if cfg.judge_free.similarity:
        ok = [i for i, p in enumerate(firsts) if p.error is None]
        scores = similarity_scores(
            [firsts[i].text for i in ok], [items[firsts[i].index].answer for i in ok], cfg.judge_free.sentence_model
        )
        sims = [0.0] * len(firsts)
        for i, s in zip(ok, scores, strict=True):
            sims[i] = s
    samples = []
    for p, sim in zip(firsts, sims, strict=True):
        reference = items[p.index].answer
        on = cfg.judge_free.diagnosis
        samples.append(
            SampleMetrics(
                model=p.model,
                index=p.index,
                similarity=sim,
                reference_diagnosis=extract_diagnosis(reference) if on else None,
                predicted_diagnosis=extract_diagnosis(p.text) if on else None,
                diagnosis_agrees=diagnosis_agrees(p.text, reference) if on else None,
            )
        )
    return samples


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows))
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def evaluate(cfg: EvalConfig, endpoint=None, lineage: Lineage | None = None) -> EvalResult:
    """The evaluation against endpoints that are up; ``endpoint`` (a :class:`vidrip.serve.launch.Endpoint`)
    stands in for every ``base_url: null``. ``lineage``: the caller's, else one for ``cfg.tracking``."""
    lineage = lineage or Lineage(cfg.tracking, cfg.workdir)
    if endpoint is None:
        cfg.check_endpoints()
    base, key = (endpoint.base_url, endpoint.api_key) if endpoint is not None else (None, None)
    models = [
        m if m.base_url else m.model_copy(update={"base_url": base, "api_key": m.api_key or key}) for m in cfg.models
    ]
    judge_cfg = cfg.judge
    if judge_cfg is not None and judge_cfg.base_url is None:
        judge_cfg = judge_cfg.model_copy(update={"base_url": base, "api_key": judge_cfg.api_key or key})
    test_set = load_test_set(cfg)
    items, bad, fingerprint = test_set.items, test_set.errors, test_set.fingerprint
    out, cache = Path(cfg.out), cfg.resolved_cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    header = _header(cfg, len(items), fingerprint, judge_cfg.base_url if judge_cfg else None)
    with_q2 = judge_cfg is not None and "consistency" in judge_cfg.criteria
    seconds: dict[str, float] = {}
    stats: dict[str, dict[str, int]] = {}

    with lineage.run("eval", cfg) as run:
        tags = {
            f"{TAG_PREFIX}dataset": str(Path(cfg.test_set).resolve()),
            f"{TAG_PREFIX}dataset_fingerprint": fingerprint,
        }
        for i, m in enumerate(models):
            tags[f"{TAG_PREFIX}eval.model.{i}"] = m.name
            tags[f"{TAG_PREFIX}eval.model.{i}.revision"] = m.revision or f"{m.model} at {m.base_url}"
        if judge_cfg is not None:
            tags[f"{TAG_PREFIX}eval.judge"] = judge_cfg.model
        run.set_tags(tags)

        preds: list[Prediction] = []
        started = time.perf_counter()
        for i, m in enumerate(models):
            with model_client(m, cache, f"models[{i}]") as chat:
                chat.check_endpoint()
                digests, desc = test_set.video_digests, f"answers: {m.name}"
                preds += predict(m, items, cfg.resolved_media_root(), chat, digests, with_q2, desc=desc)
                stats[m.name] = dict(chat.stats)
        seconds["predictions"] = time.perf_counter() - started

        judgements: list[Judgement] = []
        if judge_cfg is not None:
            started = time.perf_counter()
            judge = Judge(judge_cfg, judge_cfg.base_url, cache)
            try:
                judge.chat.check_endpoint()
                judgements = judge.score(items, preds, desc=f"judge: {judge_cfg.model}")
            finally:
                judge.close()
            stats["judge"] = dict(judge.chat.stats)
            seconds["judge"] = time.perf_counter() - started

        started = time.perf_counter()
        samples = _judge_free(cfg, items, preds)
        seconds["judge_free"] = time.perf_counter() - started

        names = [m.name for m in models]
        firsts = [p for p in preds if p.which == "question"]
        rows = aggregate(
            names,
            judgements,
            samples,
            judge_cfg.criteria if judge_cfg else [],
            prediction_failures={n: sum(p.error is not None for p in preds if p.model == n) for n in names},
            predictions={n: sum(p.model == n for p in preds) for n in names},
        )
        criteria = judge_cfg.criteria if judge_cfg else []
        title = ""
        if judge_cfg is not None:
            stand_in = " (stand-in)" if judge_cfg.stand_in else ""
            title = f"Video-ChatGPT judge metrics, judge {judge_cfg.model}{stand_in}"
        paths = write_reports(rows, header, criteria, judge_cfg is not None, out, chart_title=title)
        paths["predictions"] = _write_jsonl(out / "predictions.jsonl", preds)
        paths["judgements"] = _write_jsonl(out / "judgements.jsonl", judgements)
        paths["failures"] = _write_jsonl(out / "failures.jsonl", [j for j in judgements if j.failed])
        paths["judge_free"] = _write_jsonl(out / "judge_free.jsonl", samples)
        skipped = out / "skipped_records.txt"
        skipped.unlink(missing_ok=True)  # nothing of an earlier run is left to mislead
        if bad:
            skipped.write_text("\n".join(bad) + "\n")
            paths["skipped_records"] = skipped

        metrics = {f"{_slug(r.model)}.{k}": float(v) for r in rows for k, v in r.metrics().items()}
        for who, st in stats.items():
            for k in ("requests", "cache_hits", "retries", "failures"):
                metrics[f"calls.{_slug(who)}.{k}"] = float(st[k])
        metrics.update({f"seconds.{k}": v for k, v in seconds.items()})
        metrics.update(
            {"test_items": float(len(items)), "test_records_skipped": float(len(bad)), "answers": len(firsts)}
        )
        run.log_metrics(metrics)
        for p in paths.values():
            run.log_artifact(p)

    table = paths["table_md"].read_text()
    return EvalResult(
        rows=rows,
        table=table,
        paths={k: str(v) for k, v in paths.items()},
        run_id=run.run_id,
        stats=stats,
        seconds=seconds,
        skipped_records=bad,
    )
