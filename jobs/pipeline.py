"""The whole pipeline as one Ray job: sample -> detector -> curate -> stages 0-3 -> LoRA sweep -> merge ->
serve -> eval, each step its own MLflow run under one parent; a rerun skips what is done.

Run as:
    python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml [name=my-run sweep=null]
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml \
        ray.address=auto workdir=/mnt/shared/work
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
