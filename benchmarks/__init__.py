"""Flows benchmark harness: ``python -m benchmarks --help``.

Scenarios (see benchmarks/README.md): throughput with a concurrency sweep side by side
with DBOS (and absurd when its schema is given), per-step overhead, signal-to-resume
latency, timer lateness, replay cost, claim rate under a backlog, multi-process scaling.
"""
