"""HTTP API sources (httpx): resources read page by page, rate limits honoured.

A stream names an endpoint relative to `source.url`; each of its resources (the endpoint
itself, or one per record of a parent stream) is a page source (milepost/pages.py): given
the state recorded after its last committed page, it yields the pages after it. Paging
styles: a cursor token from the body, the next link (a `Link: rel="next"` header or a body
path), page numbers, or a single response.

Failures are sorted the way the retry policy needs: 429 is waited out here, for as long as
`Retry-After` or the rate-limit reset headers say (at most `retry.max_delay_s`, and a
stop request ends the wait); 5xx and connection errors are transient, retried by the
runner with backoff from the last committed page; any other 4xx is the operator's to fix
and is reported at once, naming the URL. Header values never appear in a message, and a
URL's secret-looking query parameters are masked.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from milepost.checkpoints.redact import is_secret_name, mask_url
from milepost.config import Endpoint, Paginate, RetrySettings
from milepost.errors import EXIT_USAGE, MilepostError, Paused
from milepost.page_cursor import CursorTracker
from milepost.pages import Page, RowShape
from milepost.urls import DatabaseUrl


class HttpError(MilepostError):
    """A request failed. `transient` is set for what a retry may cure (5xx, 429, network)."""


class HttpRefused(HttpError):
    """A 4xx other than 429, or a body that is not what the stream declares: the URL,
    token or configuration is wrong, and asking again would get the same answer."""

    exit_code = EXIT_USAGE
    final = True


def shown(url: httpx.URL | str) -> str:
    """A URL as it may appear in a message or log: secret-looking parameters masked."""
    return mask_url(str(url))


class HttpSource:
    """The `source` connection of an HTTP pipeline: one httpx.Client, made on first use.

    The runner opens one per worker (connectors.connect), so each worker has its own
    client and connection pool."""

    family = "http"

    def __init__(self, url: DatabaseUrl) -> None:
        self.url = url
        self._client: HttpClient | None = None

    def client(
        self,
        endpoint: Endpoint,
        retry: RetrySettings,
        stop: threading.Event,
        on_wait: Callable[[str], None] = lambda text: None,
    ) -> HttpClient:
        if self._client is None:
            self._client = HttpClient(endpoint, retry, stop, on_wait)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def connect(url: DatabaseUrl, role: str) -> HttpSource:
    return HttpSource(url)


def transient_reason(exc: BaseException) -> str | None:
    """httpx's own errors, when one escapes unwrapped: the network ones are transient."""
    if isinstance(exc, httpx.TransportError):
        return "connection error"
    return None


def rejection(exc: BaseException) -> str | None:
    return None


class HttpClient:
    """GET with the pipeline's headers and timeout; rate limits waited out, 5xx and network
    errors raised as transient, other 4xx raised as final."""

    def __init__(
        self,
        endpoint: Endpoint,
        retry: RetrySettings,
        stop: threading.Event,
        on_wait: Callable[[str], None],
    ) -> None:
        self.base = endpoint.url.rstrip("/") + "/"
        self.max_wait_s = retry.max_delay_s
        self.max_rate_limited = retry.max_attempts
        self.stop = stop
        self.on_wait = on_wait
        self.http = httpx.Client(
            headers={k: v.get_secret_value() for k, v in endpoint.headers.items()},
            timeout=endpoint.timeout_s,
            follow_redirects=True,
        )
        self._not_before = 0.0  # monotonic time before which no request may go out

    def close(self) -> None:
        self.http.close()

    def url(self, endpoint: str, params: dict[str, Any] | None = None) -> httpx.URL:
        """An endpoint relative to the base URL (or absolute), with `params` merged into the
        query string it may already have."""
        if endpoint.lower().startswith(("http://", "https://")):
            url = httpx.URL(endpoint)
        else:
            url = httpx.URL(self.base).join(endpoint.lstrip("/"))
        return url.copy_merge_params(_query(params)) if params else url

    def get(self, url: httpx.URL) -> httpx.Response:
        """One GET, repeated while the API says it is rate limited."""
        limited = 0
        while True:
            self._wait_until(self._not_before, "the rate limit resets")
            try:
                response = self.http.get(url)
            except httpx.TransportError as exc:
                error = HttpError(f"GET {shown(url)} failed: {type(exc).__name__}: {exc}")
                error.transient = "connection error"
                raise error from None
            self._note_limits(response)
            status = response.status_code
            if status == 429:
                limited += 1
                if limited >= self.max_rate_limited:
                    error = HttpError(f"GET {shown(url)}: HTTP 429, rate limited {limited} times")
                    error.transient = "rate limited (HTTP 429)"
                    raise error
                wait = _retry_after(response)
                self._wait_until(
                    time.monotonic() + (wait if wait is not None else 2.0**limited),
                    f"HTTP 429 from {shown(url)}",
                )
                continue
            if status >= 500:
                error = HttpError(f"GET {shown(url)}: HTTP {status} {response.reason_phrase}")
                error.transient = f"HTTP {status}"
                raise error
            if status >= 400:
                raise HttpRefused(
                    f"GET {shown(url)}: HTTP {status} {response.reason_phrase}.",
                    hint=_hint(status),
                )
            return response

    def _note_limits(self, response: httpx.Response) -> None:
        """An API that says its budget is spent (remaining 0) gets no request before the
        reset it names."""
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is None or remaining.strip() not in ("0", "0.0"):
            return
        wait = _reset_wait(response)
        if wait is not None:
            self._not_before = max(self._not_before, time.monotonic() + wait)

    def _wait_until(self, when: float, why: str) -> None:
        delay = min(when - time.monotonic(), self.max_wait_s)
        if delay <= 0:
            return
        self.on_wait(f"waiting {delay:.1f}s: {why}")
        if self.stop.wait(delay):
            raise Paused("Stopped on request while waiting for the API's rate limit.")


def _query(params: dict[str, Any]) -> dict[str, str]:
    """Query values as an API reads them: booleans as true/false, not Python's True."""
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in params.items()
    }


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date), else the reset headers."""
    value = response.headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    return _reset_wait(response)


def _reset_wait(response: httpx.Response) -> float | None:
    """`X-RateLimit-Reset` (epoch seconds) or `RateLimit-Reset` (seconds from now)."""
    for name, absolute in (("X-RateLimit-Reset", True), ("RateLimit-Reset", False)):
        value = response.headers.get(name)
        if not value:
            continue
        try:
            number = float(value.strip())
        except ValueError:
            continue
        # Some APIs send a delta under the X- name too: an "epoch" in the 1970s is one.
        if absolute and number > 1_000_000_000:
            return max(0.0, number - time.time())
        return max(0.0, number)
    return None


def _hint(status: int) -> str:
    if status in (401, 403):
        return "Check the token or credentials in `source.headers` (their values are not shown)."
    if status == 404:
        return (
            "Check `source.url` and the stream's `endpoint:` (and, for a child stream, the "
            "parent's fields it is filled from)."
        )
    return "Check the stream's `endpoint:` and `params:`."


# --- resources -------------------------------------------------------------------------


def expand(endpoint: str, values: dict[str, Any]) -> str:
    """An endpoint with its `{field}`s filled in, each value URL-encoded (a '/' kept, so
    `{full_name}` = 'acme/api' stays a path of two segments)."""
    return endpoint.format_map({k: quote(str(v), safe="/") for k, v in values.items()})


def dig(body: Any, path: str) -> Any:
    """The value at a dotted path in a JSON body ("" is the body itself); None if absent."""
    node = body
    for part in path.split(".") if path else []:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _holds_null(body: Any, path: str) -> bool:
    """Is the value at `path` present and JSON null (rather than the path missing, which
    is a wrong `records:` and must be refused)?"""
    if not path:
        return body is None
    parent, _, last = path.rpartition(".")
    node = dig(body, parent)
    return isinstance(node, dict) and last in node and node[last] is None


@dataclass
class Fetched:
    """One response: its records, and where the next page is (None: this was the last)."""

    records: list[Any]
    next_state: dict[str, Any] | None
    url: httpx.URL


class HttpResource:
    """One resource's requests: the first page, and the page after a recorded state."""

    def __init__(
        self,
        client: HttpClient,
        stream: str,
        endpoint: str,
        params: dict[str, Any],
        records: str,
        paginate: Paginate,
    ) -> None:
        self.client = client
        self.stream = stream
        self.endpoint = endpoint
        self.params = params
        self.records = records
        self.paginate = paginate

    def fetch(self, state: dict[str, Any] | None, extra: dict[str, Any]) -> Fetched:
        """The page `state` points at (None: the first), with `extra` query parameters
        (the incremental `since`) on every request built from the endpoint."""
        p, state = self.paginate, state or {}
        params = {**self.params, **extra}
        if p.style == "next_link" and state.get("next"):
            url = self.client.url(state["next"])  # the API's own link carries its query
            for name, value in self._secret_params().items():  # left out when it was stored
                if name not in url.params:
                    url = url.copy_add_param(name, value)
            base = httpx.URL(self.client.base)  # and so are a base URL's user and password
            if base.userinfo and not url.userinfo and url.host == base.host:
                url = url.copy_with(userinfo=base.userinfo)
        elif p.style == "page":
            page = int(state.get("page", p.start))
            sizes = {p.size_param: p.size} if p.size_param and p.size else {}
            url = self.client.url(self.endpoint, {**params, p.param or "page": page, **sizes})
        elif p.style == "cursor" and state.get("cursor") is not None:
            url = self.client.url(self.endpoint, {**params, p.param or "cursor": state["cursor"]})
        else:
            url = self.client.url(self.endpoint, params)
        response = self.client.get(url)
        try:
            body = response.json()
        except ValueError:
            raise HttpRefused(
                f"Stream '{self.stream}': GET {shown(url)} did not return JSON "
                f"(Content-Type: {response.headers.get('Content-Type', 'none')})."
            ) from None
        found = dig(body, self.records)
        if found is None and _holds_null(body, self.records):
            found = []  # `"items": null`: some APIs' way of saying the last page is empty
        if not isinstance(found, list):
            where = f"at `records: {self.records}`" if self.records else "as the whole body"
            raise HttpRefused(
                f"Stream '{self.stream}': GET {shown(url)} returned no list of records {where} "
                f"(found {type(found).__name__}).",
                hint="Set the stream's `records:` to the dotted path of the list in the body.",
            )
        return Fetched(found, self._next(state, response, body, found), url)

    def _next(
        self, state: dict[str, Any], response: httpx.Response, body: Any, records: list[Any]
    ) -> dict[str, Any] | None:
        p = self.paginate
        if p.style == "cursor":
            token = dig(body, p.next or "")
            if token in (None, "") or token == state.get("cursor"):
                return None
            return {"cursor": token}
        if p.style == "next_link":
            link = dig(body, p.next) if p.next else response.links.get("next", {}).get("url")
            if not link:
                return None
            # Stored absolute, so a resume does not depend on what it was relative to; the
            # API echoes `params:` into it, so a secret one (api_key=...) is left out of the
            # ledger and put back from the config when the page is asked for.
            url, here = self._stored(response.request.url.join(str(link))), response.request.url
            if url == self._stored(here):
                return None  # a last page linking to itself: asking again would loop
            return {"next": str(url)}
        if p.style == "page":
            if not records or (p.size and len(records) < p.size):
                return None
            return {"page": int(state.get("page", p.start)) + 1}
        return None

    def _stored(self, url: httpx.URL) -> httpx.URL:
        """A next link as the ledger keeps it: without the secret `params:` it echoes, nor
        the user and password a relative link takes over from the base URL."""
        url = url.copy_with(userinfo=b"")
        for name, value in self._secret_params().items():
            if url.params.get_list(name) == [value]:
                url = url.copy_remove_param(name)
        return url

    def _secret_params(self) -> dict[str, str]:
        """The stream's `params:` whose names say they hold a secret (api_key, token, ...)."""
        return {k: v for k, v in _query(self.params).items() if is_secret_name(k)}

    def probe(self) -> None:
        """The first request, to refuse a wrong URL, token or `records:` before anything
        is written (raises HttpRefused)."""
        self.fetch(None, {})


def read_pages(
    resource: HttpResource,
    shape: RowShape,
    state: dict[str, Any] | None,
    since_param: str | None = None,
    tracker: CursorTracker | None = None,
) -> Iterator[Page]:
    """The pages of one resource after `state` (None: from the first), as rows."""
    since = tracker.resume(state) if tracker is not None else None
    extra = {since_param: since} if since_param and since is not None else {}
    position = {k: v for k, v in (state or {}).items() if k in ("page", "cursor", "next")}
    done = int((state or {}).get("n", 0))
    while True:
        fetched = resource.fetch(position or None, extra)
        where = f"page {done + 1} ({shown(fetched.url)})"
        rows = []
        for record in fetched.records:
            if tracker is not None and not tracker.keep(record):
                continue
            rows.append(shape.from_record(record, where))
        done += 1
        final = fetched.next_state is None
        new_state: dict[str, Any] = {**(fetched.next_state or {}), "n": done}
        if tracker is not None:
            new_state.update(tracker.state(since))
        high = tracker.high_water() if final and tracker is not None else None
        yield Page(rows, new_state, final, high, where)
        if final:
            return
        position = fetched.next_state or {}
