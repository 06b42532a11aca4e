"""Build the embedded sample corpus.

Run as:
    python jobs/sample.py --config jobs/configs/sample.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/sample.py --config jobs/configs/sample.yaml
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
