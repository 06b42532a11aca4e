"""Templated texts of the sample corpus, built from measurements of the pixels they describe.

Every sentence is a template filled with a region's stain, magnification and measured label
(:func:`vidrip.data.sample.sources.region_label`). They are templated, not written by a pathologist,
and the "diagnoses" are labels of what a region looks like, not clinical diagnoses.
"""

from __future__ import annotations

import numpy as np

from vidrip.data.sample.sources import TissueSource

__all__ = [
    "INTRO_NARRATION",
    "caption",
    "clip_description",
    "finding",
    "finding_narration",
    "image_conversation",
    "overview_narration",
    "video_answer",
    "video_question",
]

FINDINGS = {
    "hypercellular region": "densely packed, hematoxylin-rich nuclei",
    "stroma-rich region": "pink, eosinophilic fibres with sparse nuclei",
    "DAB-positive region": "widespread brown DAB staining",
    "DAB-weak region": "little brown DAB staining over a blue hematoxylin counterstain",
}
REASONS = {
    "hypercellular region": "The high density of dark nuclei points to a cellular area rather than stroma.",
    "stroma-rich region": "Eosin-rich fibres dominate and nuclei are few, which points to stroma.",
    "DAB-positive region": "Most of the tissue carries the brown chromogen, so the marker is expressed here.",
    "DAB-weak region": "Brown chromogen is scarce, so the marker is largely not expressed here.",
}
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption for this histology image.",
    "Summarise what this image shows.",
    "What does this microscopy image show?",
)
VIDEO_QUESTIONS = (
    "Describe what the video shows and give your diagnosis.",
    "Walk through the findings in this video, then state the diagnosis.",
    "What is seen in this video, and what is the most likely diagnosis?",
)


def finding(label: str) -> str:
    return FINDINGS[label]


def caption(src: TissueSource, mag: str, label: str) -> str:
    return f"{src.stain} ({src.stain_long}) of {src.organ_hint} at {mag}: a {label} with {FINDINGS[label]}."


def image_conversation(src: TissueSource, mag: str, label: str, rng: np.random.Generator) -> list[dict]:
    q1 = rng.choice(["What stain is used in this image?", "Which staining method was used here?"])
    q2 = rng.choice(["Describe the tissue in this field.", "What stands out in this region?"])
    q3 = rng.choice(["What is the magnification, roughly?", "Is this a low- or high-power view?"])
    return [
        {"from": "human", "value": f"<image>\n{q1}"},
        {"from": "gpt", "value": f"This is {src.stain_long} ({src.stain}) staining of {src.organ_hint}."},
        {"from": "human", "value": str(q2)},
        {"from": "gpt", "value": f"It is a {label}: {FINDINGS[label]}."},
        {"from": "human", "value": str(q3)},
        {"from": "gpt", "value": f"It is viewed at {mag}."},
    ]


def clip_description(src: TissueSource, motion: str, mag: str, label: str) -> str:
    return (
        f"The view {motion} over {src.stain} stained {src.organ_hint} at {mag}, "
        f"showing a {label} with {FINDINGS[label]}."
    )


def video_question(rng: np.random.Generator) -> str:
    return str(rng.choice(VIDEO_QUESTIONS))


def video_answer(src: TissueSource, start_mag: str, end_mag: str, label: str) -> str:
    return (
        f"The video opens on a {start_mag} overview of {src.organ_hint} stained with {src.stain_long}. "
        f"The camera then moves in to {end_mag} on one area, which shows {FINDINGS[label]}. "
        f"{REASONS[label]} Diagnosis: {label}."
    )


INTRO_NARRATION = "Welcome. Today we look at two slides under the microscope."


def overview_narration(src: TissueSource) -> str:
    return f"This is an {src.stain} slide of {src.organ_hint} at low power. Let us zoom in."


def finding_narration(label: str) -> str:
    return f"Here we see {FINDINGS[label]}. This is a {label}."
