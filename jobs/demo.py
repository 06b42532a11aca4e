"""The demo job: build the sample, answer a question about a sample video on Ray, track it in MLflow.

Run as:
    python jobs/demo.py --config jobs/configs/demo.yaml [key=value ...]
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
