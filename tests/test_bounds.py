"""Bounded quoting of input in messages, length limits, yes/no parameters and bounded log lines."""
from __future__ import annotations

import io

import pytest

from cm_app.bounds import BoundedLines
from cm_core import service as S
from cm_core.models.messages import MESSAGE_CHARS, bound, check_length, quote
from cm_core.models.registry import get_spec
from cm_core.sampling.schedule import parse_ts
from cm_core.service.params import _flag


def test_quote_keeps_short_values_and_cuts_long_ones_naming_their_length():
    assert quote("abc") == "'abc'" and quote(3.5) == "3.5"
    q = quote("0" * 20_000_000)
    assert len(q) < 260 and "(20000000 characters)" in q
    assert len(quote(list(range(10 ** 6)))) < 200


def test_bound_and_check_length():
    assert bound("short") == "short"
    cut = bound("y" * 5000)
    assert len(cut) == MESSAGE_CHARS and cut.endswith("(cut: 5000 characters in all)")
    check_length("ts", "0,1", 10)
    with pytest.raises(ValueError, match="ts is 11 characters long; at most 10"):
        check_length("ts", "0" * 11, 10)


def test_long_and_unhashable_inputs_are_refused_before_parsing_with_short_messages():
    for call in (lambda: parse_ts("1," * 10_000_000, 40), lambda: get_spec("m" * 100_000),
                 lambda: S.parse_class(get_spec("cd_digits32"), "c" * 100_000), lambda: get_spec(["a"])):
        with pytest.raises(ValueError) as e:
            call()
        assert len(str(e.value)) < 1000


def test_the_ts_message_has_no_angle_brackets():
    with pytest.raises(ValueError) as e:
        parse_ts("zero,one", 40)
    assert "<" not in str(e.value) and "0,106,200/201" in str(e.value)


@pytest.mark.parametrize("value,want", [(True, True), (False, False), ("True", True), ("false", False),
                                        ("1", True), (0, False), (None, False), ("", False)])
def test_flags_accept_booleans_and_their_text(value, want):
    assert _flag("is_low_res", value) is want


def test_a_flag_that_is_neither_is_a_clear_error():
    with pytest.raises(ValueError, match="is_low_res must be true or false"):
        _flag("is_low_res", "maybe")


def test_bounded_lines_cut_each_line_once_across_writes():
    out = io.StringIO()
    s = BoundedLines(out, limit=10)
    s.write("short\n")
    s.write("a" * 8)
    s.write("b" * 8 + "\nnext")
    s.write(" line\n")
    assert out.getvalue().splitlines() == ["short", "aaaaaaaabb ... (line cut)", "next line"]
