"""Slider and number values outside their range are refused with a message naming the range.

A slider's range input clamps in the browser: typing 1000 into the number box of a 1-16 batch
slider leaves 1000 in the box but sends 16, so the visitor sees a value that was not used. Every
model-running event therefore sends what the boxes show (:func:`raw_numbers_js`, run in the
browser before the request, with :data:`TYPED_JS` on the page), and :func:`install_range_messages` makes ``gr.Slider`` and
``gr.Number`` refuse a value outside ``[minimum, maximum]`` with "Batch size must be in [1, 16],
got 1000" (Gradio's own: "Value 1000 is greater than maximum value 16.", and for an event outside
the queue a bare HTTP 500). The range is the component's own, so a step slider whose maximum
follows the chosen model refuses against that model's grid.
"""
from __future__ import annotations

import json
import math
from typing import Any

import gradio as gr

from cm_core.models.messages import quote


def _name(comp: Any) -> str:
    """A control's name for messages: its label without the parenthesised note."""
    return str(comp.label or "The value").split(" (")[0]


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}" if hi is not None else "a number"


def checked(comp: Any, payload: Any) -> float:
    """``payload`` as a number within ``comp``'s range, else ``gr.Error`` naming the range."""
    lo, hi = comp.minimum, comp.maximum
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        raise gr.Error(f"{_name(comp)} is empty: choose a value {_range(lo, hi)}", print_exception=False)
    try:
        value = float(payload)
    except (TypeError, ValueError):
        raise gr.Error(f"{_name(comp)} must be a number {_range(lo, hi)}, got {quote(payload)}",
                       print_exception=False) from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise gr.Error(f"{_name(comp)} must be {_range(lo, hi)}, got {value:g}", print_exception=False)
    return value


def install_range_messages() -> None:
    """Patch ``Slider.preprocess`` and ``Number.preprocess`` (on the classes: Gradio rebuilds a
    component per session when an update changes its range) to refuse with :func:`checked`."""
    if getattr(gr.Slider.preprocess, "cm_ranges", False):
        return

    def slider(self: gr.Slider, payload: Any) -> float:
        return gr.Number.round_to_precision(checked(self, payload), self.precision)

    def number(self: gr.Number, payload: Any) -> float | int | None:
        if payload is None:  # an optional number left empty: the handler says what it needs
            return None
        return self.round_to_precision(checked(self, payload), self.precision)
    for cls, fn in ((gr.Slider, slider), (gr.Number, number)):
        fn.cm_ranges = True  # type: ignore[attr-defined]
        cls.preprocess = fn  # type: ignore[method-assign]


#: run once when the page loads (``launch(js=...)``): remembers what was typed into each slider's
#: number box (the slider snaps the box to its range when it loses focus), forgotten when the
#: slider is dragged or the value has been sent (by every event of that click)
TYPED_JS = """() => {
  window.cmTyped = {};
  document.addEventListener('input', (e) => {
    const block = e.target.closest && e.target.closest('.block');
    if (!block || !block.id) return;
    if (e.target.type === 'number') window.cmTyped[block.id] = e.target.value;
    else delete window.cmTyped[block.id];
  }, true);
}"""


def raw_numbers_js(inputs: list) -> str | None:
    """The ``js`` of an event with these inputs: a slider whose number box was typed into since it
    was last sent sends what was typed (``null`` when empty, see :data:`TYPED_JS`), so the server
    sees, and refuses, a value out of range. Sliders without an ``elem_id`` get one (``num-<id>``);
    ``None`` when there is no slider."""
    ids = []
    for comp in inputs:
        if isinstance(comp, gr.Slider):
            comp.elem_id = comp.elem_id or f"num-{comp._id}"
            ids.append(comp.elem_id)
        else:
            ids.append(None)
    if not any(ids):
        return None
    return ("(...args) => { const ids = " + json.dumps(ids) + "; const typed = window.cmTyped || {}; "
            "return args.slice(0, ids.length).map((v, i) => { "
            "if (!ids[i] || !(ids[i] in typed)) return v; const t = String(typed[ids[i]]).trim(); "
            "setTimeout(() => delete typed[ids[i]], 0); return t === '' ? null : Number(t); }); }")


def live_js(inputs: list, wait_ms: int = 200) -> str:
    """The ``js`` of a Live event whose last input is the Live checkbox: :func:`raw_numbers_js`,
    then a wait of ``wait_ms``; a trigger that a newer one has replaced meanwhile sends Live off,
    which the server answers without running the model. Five quick seed changes make one run
    (Gradio's ``trigger_mode="always_last"`` alone still starts one per change when runs are fast)."""
    raw = raw_numbers_js(inputs) or "(...args) => args.slice(0, " + str(len(inputs)) + ")"
    return ("async (...args) => { const values = (" + raw + ")(...args); "
            "const mine = window.cmLive = (window.cmLive || 0) + 1; "
            "await new Promise((r) => setTimeout(r, " + str(int(wait_ms)) + ")); "
            "if (mine !== window.cmLive) values[values.length - 1] = false; return values; }")
