"""Fingerprint benchmark: a data set's second fingerprint (digests cached by path, size and mtime) against its
first (every file read), 2,000 small files (see vidrip.data.bench).

Run as:
    make bench
    python jobs/bench_fingerprint.py --config jobs/configs/bench_fingerprint.yaml [files=2000 file_bytes=65536]
"""

import argparse
import sys

from vidrip.config import ConfigError, load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/bench_fingerprint.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from vidrip.data.bench import BenchFingerprintConfig, format_results, run_bench

    try:
        cfg = load_config(BenchFingerprintConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    print(format_results(run_bench(cfg)))
    print(f"results: {cfg.workdir}/bench_fingerprint.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
