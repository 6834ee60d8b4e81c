"""What every event shares: the library's user errors shown as messages, and progress reports
that stop the work once the client has left."""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import gradio as gr

from cm_core import service as S
from cm_core.models.messages import bound

from .clients import client_alive


@contextlib.contextmanager
def as_messages() -> Iterator[None]:
    """Raise the library's user errors as ``gr.Error`` messages; ``S.Cancelled`` (nobody is left
    to read it) as an invisible one, with no traceback in the log. A ``gr.Error`` passes as it is
    (it is a ValueError: ``str()`` of it would add quotes)."""
    try:
        yield
    except gr.Error:
        raise
    except S.Cancelled:
        raise gr.Error("cancelled", visible=False, print_exception=False) from None
    except S.USER_ERRORS as e:
        raise gr.Error(bound(str(e)), print_exception=False) from None


def shows_errors(fn):
    """Show the library's user errors (bad input, missing checkpoint) as a message, not a crash
    (for a generator handler too: its errors come while it is iterated)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streamed(*args, **kwargs):
            with as_messages():
                return (yield from fn(*args, **kwargs))
        return streamed

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with as_messages():
            return fn(*args, **kwargs)
    return wrapped


def progress_of(progress: gr.Progress) -> S.Progress:
    """``progress`` as the library's callback; it raises ``S.Cancelled`` once the client has left
    (:func:`cm_app.clients.client_alive`), which stops the work between network evaluations."""
    alive = client_alive()

    def report(frac: float, desc: str) -> None:
        if not alive():
            raise S.Cancelled("the client left")
        progress(frac, desc=desc)
    return report
