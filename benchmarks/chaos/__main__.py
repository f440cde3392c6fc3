"""``python -m benchmarks.chaos [--reduced] [--workflows N] [--seed S] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .driver import Config, report, run, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--reduced", action="store_true", help="the CI size (150 workflows)")
    parser.add_argument("--workflows", type=int, help="number of workflows")
    parser.add_argument("--window", type=float, help="seconds over which they are started")
    parser.add_argument("--restarts", type=int, help="PostgreSQL restarts (0-5)")
    parser.add_argument("--workers", type=int, help="worker processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and worker logs")
    parser.add_argument("--json", help="write a JSON summary here")
    parser.add_argument("--quiet", action="store_true", help="only print the final table")
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("workflows", args.workflows),
            ("start_window", args.window),
            ("restarts", args.restarts),
            ("workers", args.workers),
        )
        if value is not None
    }
    overrides.update(seed=args.seed, keep=args.keep, verbose=not args.quiet)
    cfg = Config.reduced(**overrides) if args.reduced else Config(**overrides)
    began = time.monotonic()
    stats = run(cfg)
    print()
    print(report(cfg, stats))
    print(f"\ntotal runtime {time.monotonic() - began:.1f}s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary(cfg, stats), out, indent=2, default=str)
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
