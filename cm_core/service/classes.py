"""Class labels of class-conditional models: names, dropdown choices and parsing user input."""
from __future__ import annotations

from typing import Any

from ..models.imagenet_classes import imagenet_class_index, imagenet_class_names
from ..models.messages import check_length, quote
from ..models.registry import ModelSpec

MAX_CLASS_CHARS = 200  # the longest class text accepted (ImageNet names are under 100)


def class_names(spec: ModelSpec) -> tuple[str, ...]:
    """Human-readable class names of a class-conditional model ((): unconditional)."""
    if not spec.class_cond:
        return ()
    if spec.class_names:
        return spec.class_names
    if spec.arch.num_classes == 1000:
        return imagenet_class_names()
    return tuple(str(i) for i in range(spec.arch.num_classes))


RANDOM_CLASS = "random"


def class_choices(spec: ModelSpec) -> list[str]:
    """Dropdown entries: ``random`` then ``"<index>: <name>"`` ([] for unconditional models)."""
    names = class_names(spec)
    if not names:
        return []
    return [RANDOM_CLASS] + [f"{i}: {n}" if n != str(i) else str(i) for i, n in enumerate(names)]


def parse_class(spec: ModelSpec, value: Any) -> int | None:
    """A class label from ``None``/``"random"``/``-1``, an index (``207``, ``"207"``,
    ``"207: Golden Retriever"``) or a name (``"golden retriever"``); None = random per image."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", RANDOM_CLASS)):
        return None
    check_length("the class", value, MAX_CLASS_CHARS)
    names = class_names(spec)
    if not names:
        return None  # unconditional: a class choice has no effect
    n = len(names)
    if isinstance(value, bool):
        raise ValueError(f"class must be an index in [0, {n - 1}] or a name, got {quote(value)}")
    if isinstance(value, (int, float)):
        if int(value) != value:
            raise ValueError(f"class index must be an integer, got {value}")
        idx = int(value)
    else:
        head = str(value).split(":", 1)[0].strip()
        if head.lstrip("-").isdigit():
            idx = int(head)
        elif n == 1000:
            idx = imagenet_class_index(str(value))
        else:
            matches = [i for i, nm in enumerate(names) if nm.lower() == str(value).strip().lower()]
            if not matches:
                raise ValueError(f"unknown class {quote(value)} for {spec.name}; use an index in [0, {n - 1}]")
            idx = matches[0]
    if idx == -1:
        return None
    if not 0 <= idx < n:
        raise ValueError(f"class index must be in [0, {n - 1}] for {spec.name} (or 'random'), got {idx}")
    return idx
