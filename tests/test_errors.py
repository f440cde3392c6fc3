"""Flows errors: every one pickles back equal, and recorded errors are recognised by class."""

from __future__ import annotations

import copy
import inspect
import pickle
from typing import Any

import pytest

import flows_core as flows
from flows_core import ErrorInfo
from flows_core._errors import error_class

ERRORS = sorted(
    (
        exported
        for exported in (getattr(flows, name) for name in flows.__all__)
        if isinstance(exported, type) and issubclass(exported, BaseException)
    ),
    key=lambda cls: cls.__name__,
)

CAUSE = ErrorInfo(type="OSError", message="disk full \x00 é", attempts=3, details="tb")
SAMPLES: dict[str, Any] = {
    "workflow_id": "wf-1",
    "tenant_id": "tenant-a",
    "status": "failed",
    "cause": CAUSE,
    "activity": "charge",
    "error_type": "OSError",
    "message": "card declined",
    "attempts": 3,
    "reason": "operator: stuck",
    "schedule_id": "nightly",
}


def make(cls: type[BaseException]) -> BaseException:
    """An instance built the way Flows builds it: its constructor's own parameters."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if not params:
        return cls(f"{cls.__name__} happened")
    missing = [p.name for p in params if p.name not in SAMPLES]
    assert not missing, f"add sample values for {cls.__name__}'s parameters {missing}"
    return cls(*(SAMPLES[p.name] for p in params))


def assert_same(got: BaseException, original: BaseException) -> None:
    assert type(got) is type(original)
    assert got.args == original.args
    assert str(got) == str(original)
    assert repr(got) == repr(original)
    assert got.__dict__ == original.__dict__


def test_every_exported_error_is_a_flows_error() -> None:
    assert len(ERRORS) >= 25
    for cls in ERRORS:
        assert issubclass(cls, flows.FlowsError), cls


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_back_equal(cls: type[BaseException], protocol: int) -> None:
    original = make(cls)
    assert_same(pickle.loads(pickle.dumps(original, protocol)), original)
    assert_same(copy.deepcopy(original), original)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_pickles_back_equal_with_extra_attributes(cls: type[BaseException]) -> None:
    original = make(cls)
    original.add_note("while charging order 7")
    original.order = {"id": 7, "lines": ["a", "b"]}  # type: ignore[attr-defined]
    got = pickle.loads(pickle.dumps(original))
    assert_same(got, original)
    assert got.__notes__ == ["while charging order 7"]
    assert got.order == {"id": 7, "lines": ["a", "b"]}  # type: ignore[attr-defined]


def test_attributes_survive_a_round_trip() -> None:
    failed = pickle.loads(pickle.dumps(flows.WorkflowFailed("wf-1", CAUSE)))
    assert failed.workflow_id == "wf-1"
    assert failed.cause == CAUSE
    assert isinstance(failed.cause, ErrorInfo)
    act = pickle.loads(pickle.dumps(flows.ActivityFailed("charge", "OSError", "boom", 3)))
    assert (act.activity, act.error_type, act.message, act.attempts) == (
        "charge",
        "OSError",
        "boom",
        3,
    )
    not_running = pickle.loads(pickle.dumps(flows.WorkflowNotRunning("wf-1", "completed")))
    assert (not_running.workflow_id, not_running.status) == ("wf-1", "completed")
    not_found = pickle.loads(pickle.dumps(flows.WorkflowNotFound("wf-1", "tenant-a")))
    assert str(not_found) == "workflow 'wf-1' not found", "the message is not doubled"
    assert not_found.tenant_id == "tenant-a"
    terminated = pickle.loads(pickle.dumps(flows.WorkflowTerminated("wf-1", "stuck")))
    assert terminated.reason == "stuck"


class ChargeDeclined(flows.TerminalError):
    """A user's error with its own constructor."""

    def __init__(self, order_id: int, amount: float) -> None:
        super().__init__(f"order {order_id}: {amount} declined")
        self.order_id = order_id
        self.amount = amount


def test_a_users_subclass_pickles_back_equal() -> None:
    original = ChargeDeclined(7, 12.5)
    got = pickle.loads(pickle.dumps(original))
    assert_same(got, original)
    assert (got.order_id, got.amount) == (7, 12.5)


def test_a_chained_store_error_keeps_its_message() -> None:
    try:
        try:
            raise ConnectionRefusedError("no server")
        except ConnectionRefusedError as exc:
            raise flows.StoreUnavailable("the store cannot be reached: no server") from exc
    except flows.StoreUnavailable as exc:
        original = exc
    got = pickle.loads(pickle.dumps(original))
    assert_same(got, original)
    assert isinstance(got, flows.StoreError)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_error_class_recognises_recorded_flows_errors(cls: type[BaseException]) -> None:
    recorded = ErrorInfo(type=cls.__name__, message="m")
    assert error_class(recorded) is cls


def test_error_class_of_other_errors_is_none() -> None:
    assert error_class(ErrorInfo(type="OSError", message="m")) is None
    assert error_class(ErrorInfo(type="Unknown", message="")) is None
    assert error_class(ErrorInfo(type="", message="")) is None


def test_a_recorded_workflow_timeout_is_recognised() -> None:
    recorded = ErrorInfo(type="WorkflowTimeout", message="ran past 1:00:00")
    assert error_class(recorded) is flows.WorkflowTimeout
    assert error_class(ErrorInfo(type="WorkflowFailed", message="")) is not flows.WorkflowTimeout
