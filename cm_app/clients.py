"""Whether the client of the event running in this thread is still there.

Gradio cancels an event's task when its client presses Stop, calls ``job.cancel()`` or drops
its connection, and frees the event's concurrency slot; but a handler running in a worker thread
cannot be interrupted and would compute to the end. :func:`client_alive` lets the handler's
progress callback notice instead (it then raises :class:`cm_core.service.Cancelled`), so the work
stops within one network evaluation.

It reads the queue's table of live events (``Blocks._queue.event_ids_to_events``, from which
Gradio removes an event when it is cancelled, finished or its client disconnected, and whose
``alive`` flag it clears on disconnect); ``tests/test_cancel.py`` pins that behaviour. Outside
an event (tests, scripts) the client counts as present.
"""
from __future__ import annotations

from collections.abc import Callable


def client_alive() -> Callable[[], bool]:
    """A check for the current event's client (``lambda: True`` outside an event)."""
    from gradio.context import LocalContext
    blocks = LocalContext.blocks.get(None)
    event_id = LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    if not event_id or events is None:
        return lambda: True

    def alive() -> bool:
        event = events.get(event_id)
        return event is not None and getattr(event, "alive", True)
    return alive
