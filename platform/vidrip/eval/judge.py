"""The judge: Video-ChatGPT's criteria scored 0–5 by any OpenAI-compatible model, failures counted.

    judge = Judge(cfg.judge, base_url, cache_dir)
    judgements = judge.score(items, predictions)     # one Judgement per (model, item, criterion)
    judge.chat.stats                                 # requests, cache_hits, retries, failures, ...

Temperature 0. A reply is read leniently (code fences, prose around it, Python or JSON quotes, the
prompt's own ``{''score': 4}`` typo, ``Score: 4``, a bare number, a float or numeric-string score); one
that still has no score in 0..5 is asked again, up to ``max_retries`` times. Then, as the released task
does, the item scores 0; unlike it, the judgement is marked ``failed`` and counted per criterion and
per model. A prediction that failed scores 0 without asking the judge (``prediction_failed``).
``consistency`` needs the item's ``question_2`` and its prediction; items without one are not scored on it.

Judgements are cached by (judge model, :data:`~vidrip.eval.prompts.PROMPT_VERSION`, question, answer,
prediction): the request carries all of them, so a re-run pays nothing; a reply that never parsed is
remembered too unless ``remember_unparsable`` is off.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from vidrip.chat import ChatClient, ItemFailed
from vidrip.data.schema import TestRecord
from vidrip.eval.config import JudgeConfig
from vidrip.eval.predict import Prediction
from vidrip.eval.prompts import PROMPT_VERSION, consistency_messages, judge_messages, parse_judge_score

__all__ = ["Judge", "Judgement"]

log = logging.getLogger(__name__)
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 5}},  # the prompts ask for an integer
    "required": ["score"],
    "additionalProperties": False,
}
SCORE_FORMAT = {"type": "json_schema", "json_schema": {"name": "score", "schema": SCORE_SCHEMA, "strict": True}}


@dataclass
class Judgement:
    """One criterion's score of one model's answer to one item."""

    model: str
    index: int
    video_name: str
    criterion: str
    score: float
    failed: bool = False  # the judge gave no usable score: 0, as the released task does
    prediction_failed: bool = False  # the model gave no answer: 0, the judge not asked
    reason: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class Judge:
    """Scores predictions on the configured criteria through ``cfg``'s endpoint (``base_url`` resolved)."""

    def __init__(self, cfg: JudgeConfig, base_url: str, cache_dir: str | Path):
        self.cfg = cfg
        self.chat = ChatClient.for_section(
            cfg,
            base_url=base_url,
            api_key=cfg.resolved_api_key(),
            cache_dir=Path(cache_dir) / "judge",
            setting="judge",
            what="judge",
            key_hint=f"'judge.api_key' or the environment variable {cfg.api_key_env}",
        )

    def close(self) -> None:
        self.chat.close()

    def score(self, items: list[TestRecord], predictions: list[Prediction], desc: str | None = None) -> list[Judgement]:
        """Every (model, item, criterion) of ``predictions``, in a stable order."""
        by_key = {(p.model, p.index, p.which): p for p in predictions}
        models = list(dict.fromkeys(p.model for p in predictions))
        jobs = []
        for model in models:
            for index, item in enumerate(items):
                first = by_key.get((model, index, "question"))
                if first is None:
                    continue
                for criterion in self.cfg.criteria:
                    if criterion == "consistency":
                        second = by_key.get((model, index, "question_2"))
                        if item.question_2 is None or second is None:
                            continue
                        jobs.append((model, index, item, criterion, (first, second)))
                    else:
                        jobs.append((model, index, item, criterion, (first,)))
        return self.chat.map(self._one, jobs, desc=desc)

    def _one(self, job) -> Judgement:
        model, index, item, criterion, preds = job
        failed_pred = next((p for p in preds if p.error is not None), None)
        if failed_pred is not None:
            reason = f"no prediction: {failed_pred.error}"
            return Judgement(model, index, item.video_name, criterion, 0.0, prediction_failed=True, reason=reason)
        if criterion == "consistency":
            messages = consistency_messages(item.question, item.question_2, item.answer, preds[0].text, preds[1].text)
        else:
            messages = judge_messages(criterion, item.question, item.answer, preds[0].text)
        request = {"model": self.cfg.model, "messages": messages, "temperature": 0, "max_tokens": self.cfg.max_tokens}
        if self.cfg.structured_output:
            request["response_format"] = SCORE_FORMAT
        try:
            score = self.chat.complete(
                request,
                parse_judge_score,
                cache_extra={"prompt_version": PROMPT_VERSION},
                remember_unparsable=self.cfg.remember_unparsable,
            )
        except ItemFailed as exc:
            self.chat.count("failures")
            log.warning("judge: %s, item %d, %s: %s", model, index, criterion, exc)
            return Judgement(model, index, item.video_name, criterion, 0.0, failed=True, reason=str(exc))
        return Judgement(model, index, item.video_name, criterion, score)
