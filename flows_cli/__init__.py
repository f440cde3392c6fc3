"""The ``flows`` command line, above every adapter.

Commands: ``demo``, ``migrate``, ``worker``, ``start``, ``signal``, ``cancel``,
``terminate``, ``show``, ``list``, ``dead-letters``, ``retry``, ``rerun``, ``prune``,
``stats``, ``replay`` (the replay check before a deploy), ``export``, and
``embedded status|start|dsn|stop`` for the embedded PostgreSQL. They work on
PostgreSQL or Citus (``--dsn`` / ``FLOWS_DSN``, else the embedded server); ``demo --memory``
runs in memory. PostgreSQL support is imported only by the commands that need it.
"""

from ._main import main

__all__ = ["main"]
