"""Evaluation: the paper's Video-ChatGPT judge metrics through any OpenAI-compatible judge, models side by side.

- :mod:`vidrip.eval.config`: the job's typed config (``jobs/configs/eval.yaml``);
- :mod:`vidrip.eval.prompts`: the judge's prompts (constants, snapshot-tested) and reply parsing;
- :mod:`vidrip.eval.predict`: each model answers each test question about its video, cached;
- :mod:`vidrip.eval.judge`: scores 0–5 per criterion, retries, failures counted, cached;
- :mod:`vidrip.eval.metrics`: judge-free metrics (MiniLM similarity, diagnosis agreement);
- :mod:`vidrip.eval.report`: the paper's table (Markdown, CSV) and a bar chart;
- :mod:`vidrip.eval.run`: the job, tracked in MLflow;
- :mod:`vidrip.eval.lmms_export`: the test set as an lmms-eval task folder.

Research use only, not for clinical decisions.
"""
