"""Logging of `nfsip run` (the daemon, the supervisor and each worker process).

`log_level` is the level of nfsip's own loggers (the `nfsip` hierarchy) only. Every other logger writes
warnings and worse: at debug level pyroute2 logs each netlink message it sends or receives, whole
interface dumps among them, and asyncio its selector. pyroute2 resets its own logger's level to NOTSET when
it is imported (pyroute2.config.log), which undid a level set on it before the import; the root logger's
level holds whatever is imported when.
"""

from __future__ import annotations

import logging

OTHERS_LEVEL = logging.WARNING


def configure(level_name: str, log_format: str) -> None:
    """Log to stderr in `log_format`: nfsip's loggers at `level_name` ("debug", "info", ...), the others
    at warning (or at `level_name` when that is higher)."""
    level = logging.getLevelName(level_name.upper())
    logging.basicConfig(level=max(level, OTHERS_LEVEL), format=log_format)
    logging.getLogger("nfsip").setLevel(level)
