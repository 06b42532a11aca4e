"""Serving benchmark: concurrent openai clients against the Serve app with batching on and off, Serve's
added latency against the same model in-process, and autoscaling up and back down (see vidrip.serve.bench).

Run as:
    make bench
    python jobs/bench_serve.py --config jobs/configs/bench_serve.yaml [clients=16 seconds=20]
"""

import argparse
import logging
import sys

from vidrip.config import ConfigError, load_config
from vidrip.runtime import apply_offline_env


def main(argv: list[str]) -> int:
    apply_offline_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/bench_serve.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vidrip.serve.bench import BenchServeConfig, format_results, run_bench

    try:
        cfg = load_config(BenchServeConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    out = run_bench(cfg)
    print(format_results(out))
    print(f"results: {cfg.workdir}/bench_serve.json, {cfg.workdir}/bench_serve.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
