"""The Gradio UI of cm-studio (``app.py`` is the entry point). UI only: every computation is in
:mod:`cm_core.service`.

Modules: :mod:`.uploads` (guarded upload components, atomic image cache), :mod:`.handlers` (event
handlers, one per api_name), :mod:`.components` (small reusable widgets), :mod:`.tabs` (one builder
per tab) and :mod:`.layout` (the page and its events).
"""
