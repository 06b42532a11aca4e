"""The judge's prompts: Video-ChatGPT's quantitative evaluation (Maaz et al., 2023), as ViDRiP's task uses it.

One system message names the criterion with its instructions; the user message gives Question / Correct
Answer / Predicted Answer and asks for a Python-dict string with an integer ``score`` from 0 to 5. The
paper reports three criteria (``context``, ``correctness``, ``detail``); Video-ChatGPT's other two,
``temporal`` and ``consistency`` (two paraphrased questions, one reference), are options.

:func:`parse_judge_score` reads the reply leniently (code fences, prose around it, Python or JSON quotes,
the prompt's own ``{''score': 4}`` typo, ``Score: 4``, a bare number, a float or numeric-string score).
This module needs nothing but the standard library and :mod:`vidrip.chat`, so the lmms-eval export
ships a copy of both.

The wording is the benchmark's instrument, kept as Video-ChatGPT wrote it (its own typos too: the
example reply ``{''score': 4.8}``), so scores stay comparable with the paper's table. The prompts are
constants under snapshot tests: any change is a visible diff and must bump :data:`PROMPT_VERSION`,
which keys the judge cache.

    messages = judge_messages("correctness", question, answer, prediction)
"""

from __future__ import annotations

import math
import re
from typing import Literal

from vidrip.chat import UnparsableOutput, parse_json_object, short

__all__ = [
    "CRITERIA",
    "CRITERION_TITLES",
    "PAPER_CRITERIA",
    "PROMPT_VERSION",
    "Criterion",
    "consistency_messages",
    "judge_messages",
    "parse_judge_score",
]

PROMPT_VERSION = "video-chatgpt-quantitative-v1"

Criterion = Literal["context", "correctness", "detail", "temporal", "consistency"]
PAPER_CRITERIA: tuple[Criterion, ...] = ("context", "correctness", "detail")
CRITERIA: tuple[Criterion, ...] = (*PAPER_CRITERIA, "temporal", "consistency")
CRITERION_TITLES: dict[str, str] = {
    "context": "Context",
    "correctness": "Correct",
    "detail": "Detail",
    "temporal": "Temporal",
    "consistency": "Consistency",
}

_SYSTEM_HEAD = (
    "You are an intelligent chatbot designed for evaluating the {what} of generative outputs for video-based "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine "
    "{task}. Here's how you can accomplish the task:------##INSTRUCTIONS: "
)

_USER_TAIL = (
    "Provide your evaluation only as a {name} score where the {name} score is an integer value between 0 and 5, "
    "with 5 indicating the highest level of {level}. Please generate the response in the form of a Python "
    "dictionary string with keys 'score', where its value is the {name} score in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{''score': 4.8}}."
)

_GENERIC = {
    "correctness": {
        "what": "factual accuracy",
        "task": "if they are factually consistent",
        "instructions": (
            "- Focus on the factual consistency between the predicted answer and the correct answer. The predicted "
            "answer should not contain any misinterpretations or misinformation.\n"
            "- The predicted answer must be factually accurate and align with the video content.\n"
            "- Consider synonyms or paraphrases as valid matches.\n"
            "- Evaluate the factual accuracy of the prediction compared to the answer."
        ),
        "name": "factual accuracy",
        "level": "factual consistency",
    },
    "detail": {
        "what": "detail orientation",
        "task": "its level of detail, considering both completeness and specificity",
        "instructions": (
            "- Check if the predicted answer covers all major points from the video. The response should not leave "
            "out any key aspects.\n"
            "- Evaluate whether the predicted answer includes specific details rather than just generic points. It "
            "should provide comprehensive information that is tied to specific elements of the video.\n"
            "- Consider synonyms or paraphrases as valid matches.\n"
            "- Provide a single evaluation score that reflects the level of detail orientation of the prediction, "
            "considering both completeness and specificity."
        ),
        "name": "detail orientation",
        "level": "detail orientation",
    },
    "context": {
        "what": "contextual understanding",
        "task": "if the generated response aligns with the overall context of the video content",
        "instructions": (
            "- Evaluate whether the predicted answer aligns with the overall context of the video content. It should "
            "not provide information that is out of context or misaligned.\n"
            "- The predicted answer must capture the main themes and sentiments of the video.\n"
            "- Consider synonyms or paraphrases as valid matches.\n"
            "- Provide your evaluation of the contextual understanding of the prediction compared to the answer."
        ),
        "name": "contextual understanding",
        "level": "contextual understanding",
    },
    "temporal": {
        "what": "temporal understanding",
        "task": "if they correctly reflect the temporal sequence of events in the video content",
        "instructions": (
            "- Focus on the temporal consistency between the predicted answer and the correct answer. The predicted "
            "answer should correctly reflect the sequence of events or details as they are presented in the video "
            "content.\n"
            "- Consider synonyms or paraphrases as valid matches, but only if the temporal order is maintained.\n"
            "- Evaluate the temporal accuracy of the prediction compared to the answer."
        ),
        "name": "temporal accuracy",
        "level": "temporal consistency",
    },
}

_CONSISTENCY_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the consistency of generative outputs for similar "
    "video-based question-answer pairs. You will be given two very similar questions, a common answer common to "
    "both the questions and predicted answers for the two questions .Your task is to compare the predicted answers "
    "for two very similar question, with a common correct answer and determine if they are consistent. Here's how "
    "you can accomplish the task:------##INSTRUCTIONS: "
    "- Focus on the consistency between the two predicted answers and the correct answer. Both predicted answers "
    "should correspond to the correct answer and to each other, and should not contain any contradictions or "
    "significant differences in the conveyed information.\n"
    "- Both predicted answers must be consistent with each other and the correct answer, in terms of the "
    "information they provide about the video content.\n"
    "- Consider synonyms or paraphrases as valid matches, but only if they maintain the consistency in the "
    "conveyed information.\n"
    "- Evaluate the consistency of the two predicted answers compared to the correct answer."
)


def judge_messages(criterion: Criterion, question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The judge's messages for one of the single-question criteria (all but ``consistency``)."""
    if criterion not in _GENERIC:
        raise ValueError(f"criterion {criterion!r}: one of {sorted(_GENERIC)} (consistency has its own messages)")
    spec = _GENERIC[criterion]
    system = _SYSTEM_HEAD.format(what=spec["what"], task=spec["task"]) + spec["instructions"]
    user = (
        "Please evaluate the following video-based question-answer pair:\n\n"
        f"Question: {question}\n"
        f"Correct Answer: {answer}\n"
        f"Predicted Answer: {prediction}\n\n" + _USER_TAIL.format(name=spec["name"], level=spec["level"])
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def consistency_messages(
    question_1: str, question_2: str, answer: str, prediction_1: str, prediction_2: str
) -> list[dict[str, str]]:
    """The judge's messages for ``consistency``: two paraphrased questions, one reference, two predictions."""
    user = (
        "Please evaluate the following video-based question-answer pair:\n\n"
        f"Question 1: {question_1}\n"
        f"Question 2: {question_2}\n"
        f"Correct Answer: {answer}\n"
        f"Predicted Answer to Question 1: {prediction_1}\n"
        f"Predicted Answer to Question 2: {prediction_2}\n\n"
        + _USER_TAIL.format(name="consistency", level="consistency")
    )
    return [{"role": "system", "content": _CONSISTENCY_SYSTEM}, {"role": "user", "content": user}]


_LOOSE_SCORE = re.compile(r"""['"]*score['"]*\s*[:=]\s*['"]?\s*([-+]?\d+(?:\.\d+)?)""", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)\s*")


def parse_judge_score(text: str) -> float:
    """The 0–5 ``score`` of a judge's reply (see module docstring); :class:`UnparsableOutput` if none."""
    value = None
    try:
        obj = parse_json_object(text)
    except UnparsableOutput:
        obj = None
    if obj is not None:
        key = next((k for k in obj if isinstance(k, str) and k.strip("'\" ").lower() == "score"), None)
        if key is None:
            raise UnparsableOutput(f"no 'score' in {short(text)!r}")
        value = obj[key]
    elif m := _LOOSE_SCORE.search(text or "") or _BARE_NUMBER.fullmatch(text or ""):
        value = m.group(1)
    else:
        raise UnparsableOutput(f"no score in {short(text or '')!r}" if text and text.strip() else "empty reply")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UnparsableOutput(f"score is not a number: {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UnparsableOutput(f"score is not a number: {value!r}")
    if not 0 <= value <= 5:
        raise UnparsableOutput(f"score {value!r} is outside 0..5")
    return float(value)
