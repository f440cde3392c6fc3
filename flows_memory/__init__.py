"""In-memory Flows: a reference store, a virtual clock and a time-skipping test env."""

from ._clock import VirtualClock
from ._store import FaultHook, MemoryStore
from ._testing import TestEnvironment

__all__ = ["FaultHook", "MemoryStore", "TestEnvironment", "VirtualClock"]
