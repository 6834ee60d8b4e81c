"""The 1000 ImageNet-1k class names, human-readable, in class-index order (0 "tench" ... 999).

The names are the "simple labels" of Anish Athalye's imagenet-simple-labels (MIT licence, also
shipped inside Gradio as ``media_assets/data/imagenet_labels.json``): WordNet's first lemma made
readable and unique, so that every one of the 1000 names is distinct (the raw WordNet list repeats
"crane" and "maillot"). Index 207 is "Golden Retriever", 999 is "toilet paper".
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_FILE = Path(__file__).with_name("imagenet_classes.json")


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 names, index = class label."""
    names = tuple(json.loads(_FILE.read_text(encoding="utf-8")))
    if len(names) != 1000:
        raise RuntimeError(f"{_FILE}: expected 1000 ImageNet class names, found {len(names)}")
    return names


def imagenet_class_index(name: str) -> int:
    """Class index of a name (case-insensitive); ``ValueError`` listing close names otherwise."""
    low = name.strip().lower()
    names = imagenet_class_names()
    for i, n in enumerate(names):
        if n.lower() == low:
            return i
    close = [n for n in names if low and low in n.lower()][:8]
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown ImageNet class {name!r}{hint}")
