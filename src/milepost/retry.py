"""Retrying what a passing fault broke: backoff with jitter, counted from the last progress.

A transient error (see `connectors.transient_reason`) is retried; anything else is
raised at once. Attempts count failures in a row *without progress*: a copy that
commits a batch between two outages starts its count again, so a run of many hours
survives many separate restarts while a server that stays down still ends the run
after `max_attempts`. The wait between attempts is interruptible: a pause request
during a backoff stops at once rather than after the wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from milepost import connectors
from milepost.config import RetrySettings
from milepost.errors import MilepostError, Paused, RetriesExhausted
from milepost.events import Event, Listener

T = TypeVar("T")


class RetryPolicy:
    def __init__(self, settings: RetrySettings, stop: threading.Event, emit: Listener) -> None:
        self.settings = settings
        self.stop = stop
        self.emit = emit
        # "Full jitter": a random wait up to initial * 2^(n-1), capped; outages that hit
        # every worker at once then do not reconnect in lockstep.
        self._wait = wait_random_exponential(
            multiplier=settings.initial_delay_s, max=settings.max_delay_s
        )

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        progress: Callable[[], int],
        stream: str | None = None,
        retry_if: Callable[[BaseException], bool] = lambda exc: True,
    ) -> T:
        """Run `fn`, again after each transient failure, until it returns or retries run out.

        `progress` returns a number that grows when work commits (rows done), so the
        attempt count can restart after progress. `retry_if` narrows further (e.g. a
        failure before the run held its lease is reported, not retried).
        """
        max_attempts = self.settings.max_attempts
        mark = {"progress": progress(), "first": 1, "since": time.monotonic()}

        def failures_in_a_row(state: RetryCallState) -> int:
            now = progress()
            if now != mark["progress"]:
                mark.update(progress=now, first=state.attempt_number, since=time.monotonic())
            return state.attempt_number - mark["first"] + 1

        def should_stop(state: RetryCallState) -> bool:
            return failures_in_a_row(state) >= max_attempts

        def wait(state: RetryCallState) -> float:
            return self._wait(SimpleNamespace(attempt_number=failures_in_a_row(state)))

        def announce(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            n = failures_in_a_row(state)
            delay = state.next_action.sleep if state.next_action else 0.0
            reason = connectors.transient_reason(exc) if exc else None
            self.emit(
                Event(
                    "retry",
                    stream=stream,
                    text=f"{what}: {reason} ({_brief(exc)}); attempt {n + 1} of "
                    f"{max_attempts} in {delay:.1f}s",
                    data={"attempt": n + 1, "wait_s": round(delay, 3), "reason": reason},
                )
            )

        def give_up(state: RetryCallState) -> T:
            exc = state.outcome.exception() if state.outcome else None
            n = failures_in_a_row(state)
            spent = time.monotonic() - mark["since"]
            error = RetriesExhausted(
                f"{what}: gave up after {n} attempts in {spent:.0f}s: "
                f"{connectors.transient_reason(exc) if exc else 'error'} ({_brief(exc)}).",
                hint="Everything up to the last committed batch is kept and the run is paused; "
                "run the same command again once the server is back to resume.",
            )
            error.stream = stream
            raise error from exc

        retrying = Retrying(
            stop=should_stop,
            wait=wait,
            retry=retry_if_exception(
                lambda exc: connectors.transient_reason(exc) is not None and retry_if(exc)
            ),
            sleep=self._sleep,
            before_sleep=announce,
            retry_error_callback=give_up,
            reraise=True,
        )
        return retrying(fn)

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Paused("Stopped on request while waiting to retry.")


def _brief(exc: BaseException | None) -> str:
    """The driver's own words: the innermost cause, without milepost's wrapping."""
    if exc is None:
        return "no error"
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = exc.message if isinstance(exc, MilepostError) else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text[:300]
