"""Evaluation: models side by side on the paper's Video-ChatGPT judge metrics (context, correctness, detail),
through any OpenAI-compatible judge, with judge-free metrics beside them, tracked in MLflow.

Run as:
    python jobs/eval.py --config jobs/configs/eval.yaml [judge.base_url=https://api.openai.com/v1 limit=10]
    python jobs/eval.py export-lmms-eval work/lmms_tasks --config jobs/configs/eval.yaml
    ray job submit --working-dir . -- python jobs/eval.py --config jobs/configs/eval.yaml ray.address=auto
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
