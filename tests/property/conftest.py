"""Hypothesis profiles for the property tests: HYPOTHESIS_PROFILE=ci|dev|long.

``ci`` is derandomized (the same cases on every run) with the full example counts;
``dev`` (the default) runs half as many, randomized; ``long`` ten times as many.
Per-test counts are set with ``prop_support.scaled(n)``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("dev", **_common)
settings.register_profile("long", **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
