"""The Gradio UI of cm-studio (``app.py`` is the entry point). UI only: every computation is in
:mod:`cm_core.service`.

Modules: :mod:`.uploads` (guarded upload components, atomic image cache), :mod:`.handlers` (the
model-running event handlers, one per api_name), :mod:`.picker` (the model picker and the registry's
endpoints), :mod:`.events` (errors as messages, progress), :mod:`.editor_values` (ImageEditor values
-> picture and mask), :mod:`.components` (small reusable widgets), :mod:`.tabs` (one builder per tab)
and :mod:`.layout` (the page and its events).
"""
