"""Bounded quoting of user input in error messages and log lines.

A request may carry megabytes in any text field (a 20 MB ``ts`` string, a 100 kB model name, a
data URL where a file path belongs). Every message that echoes input quotes it through
:func:`quote` (at most :data:`QUOTE_CHARS` characters of it, and its full length), text fields are
refused by length before they are parsed (:func:`check_length`), and whatever reaches a visitor or
a log line is cut to :data:`MESSAGE_CHARS` by :func:`bound`. :func:`renamed` maps a deprecated
keyword to its new name with a warning that says which; :func:`old_keywords` does it for a function.
"""
from __future__ import annotations

import functools
import reprlib
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

QUOTE_CHARS = 200  # characters of user input an error message may quote
MESSAGE_CHARS = 1000  # the longest error message or log line

_REPR = reprlib.Repr()
_REPR.maxstring = QUOTE_CHARS
_REPR.maxother = QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def quote(value: Any) -> str:
    """``repr(value)`` of at most about :data:`QUOTE_CHARS` characters; a longer string is cut in
    the middle (``'abc...xyz'``) and followed by its length, e.g. ``'00000...0000' (20000000 characters)``."""
    text = _REPR.repr(value)
    if isinstance(value, (str, bytes)) and len(value) > QUOTE_CHARS:
        text += f" ({len(value)} characters)"
    return text


def bound(message: str, limit: int = MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters (a cut one ends with how long it was)."""
    if len(message) <= limit:
        return message
    tail = f"... (cut: {len(message)} characters in all)"
    return message[:max(0, limit - len(tail))] + tail


def check_length(what: str, text: Any, limit: int) -> None:
    """Refuse a text field longer than ``limit`` characters before parsing it (``ValueError``)."""
    if isinstance(text, (str, bytes)) and len(text) > limit:
        raise ValueError(f"{what} is {len(text)} characters long; at most {limit} are accepted")


def renamed(kwargs: dict[str, Any], **old_to_new: str) -> dict[str, Any]:
    """``kwargs`` with each deprecated keyword (a key of ``old_to_new``) under its new name, with a
    ``DeprecationWarning`` naming both; giving both names is a ``TypeError``."""
    out = dict(kwargs)
    for old, new in old_to_new.items():
        if old in out:
            if new in out:
                raise TypeError(f"got both {old}= and {new}=; {old} is the deprecated name of {new}")
            warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out


def old_keywords(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: ``fn`` also takes each deprecated keyword of ``old_to_new`` (see :func:`renamed`)."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **renamed(kwargs, **old_to_new))
        return inner  # type: ignore[return-value]
    return wrap
