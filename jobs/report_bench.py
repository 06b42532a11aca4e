"""The benchmarks' ratios in one Markdown report (run by `make bench` after every jobs/bench_*.py).

Run as:
    python jobs/report_bench.py [work/bench]
"""

import sys

from vidrip.bench_report import write_report

if __name__ == "__main__":
    path = write_report(sys.argv[1] if len(sys.argv) > 1 else "work/bench")
    print(path.read_text())
    print(f"report: {path}")
