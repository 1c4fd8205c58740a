"""Telling someone a run has stopped for good reason: a log line, and an optional webhook.

Sent when retries run out and the run pauses itself, the case where a person has to
look (a server that stays down). The webhook gets a small JSON document; a receiver
that is down or slow costs a log line, never the run's state or its exit code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from milepost.config import Pipeline
from milepost.errors import RetriesExhausted
from milepost.events import Event, Listener

if TYPE_CHECKING:
    import httpx

WEBHOOK_TIMEOUT_S = 10.0


def send_alert(
    pipeline: Pipeline,
    run_id: str,
    error: RetriesExhausted,
    origin: str | None,
    emit: Listener,
) -> bool:
    """Log the alert and POST it to `alert_webhook` if set. True when the receiver took it."""
    resume = f"milepost run {origin}" if origin else "run the pipeline again"
    emit(
        Event(
            "alert",
            stream=error.stream,
            text=f"ALERT: pipeline '{pipeline.name}' paused: {error.message} To resume: {resume}",
        )
    )
    if pipeline.alert_webhook is None:
        return False
    url = pipeline.alert_webhook.get_secret_value()
    payload = {
        "pipeline": pipeline.name,
        "run_id": run_id,
        "status": "paused",
        "stream": error.stream,
        "error": error.message,
        "resume": resume,
    }
    import httpx  # ~90 ms of imports, paid only by a run that has a webhook to call

    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        emit(
            Event(
                "message",
                text=f"The alert webhook {_shown(url)} did not take the alert: "
                f"{type(exc).__name__}{_status(exc)}.",
            )
        )
        return False
    return True


def _shown(url: str) -> str:
    """Scheme and host only: webhook paths and queries often carry the token."""
    import httpx

    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}/…"


def _status(exc: httpx.HTTPError) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f" (HTTP {exc.response.status_code})"
    return ""
