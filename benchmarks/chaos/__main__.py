"""``python -m benchmarks.chaos [--net | --citus] [--reduced] [--workflows N] [--seed S]``.

Without ``--net`` or ``--citus``: the PostgreSQL chaos suite (worker SIGKILLs, terminated
backends, PostgreSQL restarts). ``--net``: the workers reach PostgreSQL through a TCP
fault proxy (latency, jitter, resets, half-open connections, black holes, a partition
longer than the lease). ``--citus``: a local 3-node Citus cluster under node and
coordinator restarts, terminated backends, worker SIGKILLs and shard moves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .driver import Config, Stats, report, run, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--net", action="store_true", help="chaos on a faulty network")
    where.add_argument("--citus", action="store_true", help="chaos on a 3-node Citus cluster")
    parser.add_argument("--reduced", action="store_true", help="the CI size")
    parser.add_argument("--workflows", type=int, help="number of workflows")
    parser.add_argument("--window", type=float, help="seconds over which they are started")
    parser.add_argument("--restarts", type=int, help="PostgreSQL restarts (0-5)")
    parser.add_argument("--workers", type=int, help="worker processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and worker logs")
    parser.add_argument("--json", help="write a JSON summary here")
    parser.add_argument("--quiet", action="store_true", help="only print the final table")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
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
    began = time.monotonic()
    cfg: Config
    stats: Stats
    if args.net:
        from .net import NetConfig, run_net

        net_cfg = NetConfig.reduced(**overrides) if args.reduced else NetConfig(**overrides)
        cfg, stats = net_cfg, run_net(net_cfg)
    elif args.citus:
        from .citus import CitusConfig, run_citus

        citus_cfg = CitusConfig.reduced(**overrides) if args.reduced else CitusConfig(**overrides)
        cfg, stats = citus_cfg, run_citus(citus_cfg)
    else:
        cfg = Config.reduced(**overrides) if args.reduced else Config(**overrides)
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
