"""Curate raw teaching videos into clips, tables and instruction JSON on Ray Data (see vidrip.curate.pipeline).

Run as:
    python jobs/curate.py --config jobs/configs/curate.yaml [inputs='[/data/lectures]' llm.base_url=http://127.0.0.1:8000/v1]
    python jobs/curate.py train-detector --config jobs/configs/train_detector.yaml
    ray job submit --working-dir . -- python jobs/curate.py --config jobs/configs/curate.yaml ray.address=auto
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
