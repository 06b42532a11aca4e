"""Training benchmark: Ray Train's step time against a single-process Hugging Face Trainer, samples/s and
tokens/s per worker, and on a GPU the MFU of the ov-7b shape (see vidrip.train.bench).

Run as:
    make bench
    python jobs/bench_train.py --config jobs/configs/bench_train.yaml [steps=20 modes=[single,ray-1]]
    python jobs/bench_train.py --config jobs/configs/bench_train_gpu.yaml       # on a GPU machine
"""

import argparse
import logging
import sys

from vidrip.config import ConfigError, load_config
from vidrip.runtime import apply_offline_env


def main(argv: list[str]) -> int:
    apply_offline_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/bench_train.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vidrip.train.bench import BenchTrainConfig, format_results, run_bench

    try:
        cfg = load_config(BenchTrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    out = run_bench(cfg)
    print(format_results(out))
    print(f"results: {cfg.workdir}/bench_train.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
