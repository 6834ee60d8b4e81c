"""Replies and log lines of bounded length, whatever a request carries.

The app's own messages quote at most a few hundred characters of input
(:mod:`cm_core.models.messages`), but Gradio turns errors raised before a handler runs into replies
and tracebacks with the whole ``str(error)``: a request whose file ``path`` is a 2 MB data URL got
a 2 MB reply and a 2 MB log line. :func:`install_bounded_errors` cuts every error reply Gradio
builds, and :func:`install_bounded_logs` cuts every line the process writes to stdout and stderr,
both to :data:`~cm_core.models.messages.MESSAGE_CHARS`.
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Any, TextIO

from cm_core.models.messages import MESSAGE_CHARS, bound


def _bounded_payload(payload: Any) -> Any:
    @functools.wraps(payload)
    def wrapped(error: BaseException | None, show_error: bool) -> dict:
        content = payload(error, show_error)
        if isinstance(content.get("error"), str):
            content["error"] = bound(content["error"])
        return content
    wrapped.cm_bounded = True  # type: ignore[attr-defined]
    return wrapped


def install_bounded_errors() -> None:
    """Cut the message of every error reply to :data:`MESSAGE_CHARS` (Gradio's ``error_payload``,
    where the queue and the routes both look it up)."""
    from gradio import queueing, routes, utils
    for module in (utils, queueing, routes):
        fn = getattr(module, "error_payload", None)
        if fn is not None and not getattr(fn, "cm_bounded", False):
            module.error_payload = _bounded_payload(fn)


class BoundedLines:
    """A text stream that passes at most ``limit`` characters of each line on to ``stream`` (a cut
    line ends with a note of it); everything else is delegated to ``stream``."""

    def __init__(self, stream: TextIO, limit: int = MESSAGE_CHARS) -> None:
        self._stream, self._limit = stream, limit
        self._column, self._cut = 0, False
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        out = []
        with self._lock:
            for piece in text.splitlines(keepends=True):
                body = piece.rstrip("\r\n")
                room = self._limit - self._column
                out.append(body[:max(0, room)])
                if len(body) > room and not self._cut:
                    out.append(" ... (line cut)")
                    self._cut = True
                self._column += len(body)
                if len(body) != len(piece):  # the line ends here
                    out.append(piece[len(body):])
                    self._column, self._cut = 0, False
            self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install_bounded_logs() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`BoundedLines` (once)."""
    if not isinstance(sys.stdout, BoundedLines):
        sys.stdout = BoundedLines(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, BoundedLines):
        sys.stderr = BoundedLines(sys.stderr)  # type: ignore[assignment]
