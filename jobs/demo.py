"""The demo: a Ray head on 127.0.0.1, the whole pipeline submitted to it with `ray job submit` on the embedded
sample; ends with the evaluation table, an openai-client example against the endpoint and `vidrip ui`.

Run as:
    python jobs/demo.py --config jobs/configs/demo.yaml [key=value ...]
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
