"""Crash points: a real SIGKILL at a named moment, so fault tests can aim where they hit.

A kill at a random moment tests what is likely; a kill at a named point tests what is
rare but decisive, such as "the batch is written and the ledger updated, but not yet
committed". Off unless the environment names a point:

    MILEPOST_CRASH_AT=copy.before_commit      # the first time it is reached
    MILEPOST_CRASH_AT=copy.before_commit@3    # the third time

Points: schema.after_create, copy.before_commit, copy.after_commit,
copy.refused_after_commit (a batch written around refused rows), pages.before_commit,
pages.after_commit and pages.after_enqueue (HTTP and Python streams, milepost/pages.py
and page_streams.py), and finalize.before_done. The variable is read once at import;
when it is unset a crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal
import threading

_SETTING = os.environ.get("MILEPOST_CRASH_AT") or None
_POINT, _, _NTH = (_SETTING or "").partition("@")
_WANTED = int(_NTH) if _NTH.isdigit() else 1
_hits = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process here if the environment asks for it."""
    global _hits
    if _SETTING is None or name != _POINT:
        return
    with _lock:
        _hits += 1
        if _hits == _WANTED:
            os.kill(os.getpid(), signal.SIGKILL)
