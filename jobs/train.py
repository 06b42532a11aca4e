"""Train stages 0-3 (or some of them), each from the previous stage's checkpoint, on Ray Train.

Run as:
    python jobs/train.py --config jobs/configs/train_tiny.yaml [stages=[0,1] stage_overrides.1.lr=2e-5]
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train_tiny.yaml ray.address=auto
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
