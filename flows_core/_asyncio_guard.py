"""What to tell workflow code that used asyncio: the API it called and the Flows
equivalent. Replay runs workflow code with a stand-in event loop (``_replay._NoLoop``)
whose every use lands here, from inside the asyncio function that touched it."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

__all__ = ["asyncio_advice", "close_unstarted"]

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_TIMEOUT = (
    "Put a timeout on a step with `await flows.race(step, timeout=seconds)` "
    "(it raises TimeoutError), on each activity attempt with "
    "@flows.activity(timeout=...), or on a signal with ctx.wait_for_signal(..., timeout=...)."
)
_CONCURRENT = (
    "Run steps or coroutines of workflow code concurrently with `await flows.gather(...)`, "
    "or `await flows.race(...)` for the first one to finish."
)
_ADVICE: dict[str, str] = {
    "sleep": "Use ctx.sleep(), a durable timer: `await ctx.sleep(seconds)`.",
    "timeout": _TIMEOUT,
    "timeout_at": _TIMEOUT,
    "wait_for": _TIMEOUT,
    "create_task": _CONCURRENT,
    "ensure_future": _CONCURRENT,
    "gather": _CONCURRENT,
    "wait": "Use `await flows.race(...)` to wait for the first step to finish, "
    "or `await flows.gather(...)` for all of them.",
    "as_completed": "Use `await flows.race(...)` to wait for the first step to finish.",
    "shield": "Await the step itself: a step is only cancelled by flows.race, by "
    "flows.gather after a failure, or by a cancel of the workflow.",
    "to_thread": "Do blocking or I/O work in an activity: `await ctx.execute(activity, input)`.",
    "run_in_executor": "Do blocking or I/O work in an activity: "
    "`await ctx.execute(activity, input)`.",
}


def close_unstarted(frame: Any) -> None:
    """Close the coroutines handed to the refused asyncio call (``create_task(coro)``),
    so they do not warn "never awaited" later."""
    while frame is not None and frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
        for value in list(frame.f_locals.values()):
            for item in value if isinstance(value, list | tuple | set) else (value,):
                if (
                    inspect.iscoroutine(item)
                    and inspect.getcoroutinestate(item) == inspect.CORO_CREATED
                ):
                    item.close()
        frame = frame.f_back


def asyncio_advice(frame: Any) -> tuple[str, str]:
    """The asyncio API that workflow code called (the outermost asyncio frame below
    the workflow's frame), and the Flows equivalent to name."""
    api, module, owner = None, "", None
    while frame is not None and frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
        api = frame.f_code.co_name
        module = os.path.basename(frame.f_code.co_filename).removesuffix(".py")
        owner = frame.f_locals.get("self")
        frame = frame.f_back
    if api is None:
        return "asyncio.get_running_loop()", _ADVICE["to_thread"]
    if module == "timeouts":
        api = "timeout"
    elif module not in ("tasks", "threads"):
        where = type(owner).__name__ if owner is not None else module
        return f"asyncio.{where}.{api}()", (
            "Use Flows steps instead: ctx.sleep(), ctx.execute(), ctx.wait_for_signal(), "
            "flows.gather() and flows.race()."
        )
    return f"asyncio.{api}()", _ADVICE.get(api, _ADVICE["create_task"])
