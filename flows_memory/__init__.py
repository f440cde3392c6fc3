"""In-memory Flows: a reference store, a virtual clock and a time-skipping test env."""

from flows_core._public import publish

from ._clock import VirtualClock
from ._store import FaultHook, MemoryStore
from ._testing import TestEnvironment
from ._transaction import MemoryTransaction

__all__ = ["FaultHook", "MemoryStore", "MemoryTransaction", "TestEnvironment", "VirtualClock"]

publish(__name__, globals(), __all__)
