"""Curation benchmark: the Ray Data pipeline against a single-process loop over the same steps, the decode
step against raw decord, and the share of frames the heavy models see (see vidrip.curate.bench).

Run as:
    make bench
    python jobs/bench_curate.py --config jobs/configs/bench_curate.yaml [sample.raw_videos=8 modes=[ray]]
"""

import argparse
import logging
import sys

from vidrip.config import ConfigError, load_config
from vidrip.runtime import apply_offline_env


def main(argv: list[str]) -> int:
    apply_offline_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/bench_curate.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vidrip.curate.bench import BenchCurateConfig, format_results, run_bench

    try:
        cfg = load_config(BenchCurateConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    out = run_bench(cfg)
    print(format_results(out))
    print(f"results: {cfg.workdir}/bench_curate.json, {cfg.workdir}/bench_curate.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
