"""load_json (orjson first, the standard library on what orjson refuses) reads every text as
``json.loads`` does: the same value, of the same types, bit for bit, or a ValueError where
``json.loads`` raises one. The strict V2 parser's guarantees (huge integers refused, NaN read
and then refused as a pixel, integers kept exact) rest on the values that load_json gives.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.protocol.infer_type import LONG_DIGIT_RUN, _has_long_digit_run, load_json
from tests.fuzz.test_properties import (
    DEEP,
    FUZZ,
    HUGE_INT,
    ISSUE_REPRODUCERS,
    dumps,
    json_values,
    v2_bodies,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types; floats bit for bit (NaN, -0.0), dicts in key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def assert_reads_as_json_does(text: bytes) -> None:
    try:
        expected: Any = json.loads(text)
    except (ValueError, RecursionError):
        expected = ValueError
    try:
        got: Any = load_json(text)
    except ValueError:
        got = ValueError
    if expected is ValueError or got is ValueError:
        assert got is expected, f"json.loads gives {expected!r:.200}, load_json {got!r:.200}"
    else:
        assert same(got, expected), f"{text[:200]!r}: {got!r:.200} != {expected!r:.200}"


# Number literals as clients write them: signs, leading digits, fractions, exponents, and
# runs of digits on both sides of LONG_DIGIT_RUN.
number_texts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?\Z")
EDGES = [
    b"NaN", b"[Infinity, -Infinity]", b"1e400", b"-1e400", b"1e-400", b"-0", b"-0.0",
    b"18446744073709551615", b"18446744073709551616", b"-9223372036854775808",
    b"-9223372036854775809", b"999999999999999999", b"9999999999999999999",
    b"1234567890123456789.5", b"0.30000000000000004441", b"2.2250738585072011e-308",
    b'"\\ud800"', b'"\\udc00\\ud800"', b"\xef\xbb\xbf{}", b'{"a":1,"a":2}', b'"\\u0000"',
    b'"\xff"', b"", b" ", b"[1,]", b"01", b".5", b'"a\tb"', DEEP, HUGE_INT,
    b"[" * 1100 + b"]" * 1100, json.dumps({"x": 1}).encode("utf-16"),
    json.dumps([0.5, "\u00e9"]).encode("utf-32"),
]  # fmt: skip


CASES = EDGES + ISSUE_REPRODUCERS


@pytest.mark.parametrize("text", CASES, ids=range(len(CASES)))
def test_edge_cases_read_as_json_does(text: bytes) -> None:
    assert_reads_as_json_does(text)


@FUZZ
@given(st.one_of(json_values.map(dumps), v2_bodies().map(dumps)))
def test_json_values_read_as_json_does(text: bytes) -> None:
    assert_reads_as_json_does(text)


@FUZZ
@given(st.lists(number_texts, min_size=1, max_size=8))
@example(["9223372036854775807", "-9223372036854775808", "18446744073709551615"])
def test_number_literals_read_as_json_does(numbers: list[str]) -> None:
    assert_reads_as_json_does(("[" + ",".join(numbers) + "]").encode())


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_as_json_does(text: bytes) -> None:
    assert_reads_as_json_does(text)


@FUZZ
@given(st.text(alphabet="0123456789 ,.-e[]", max_size=80))
def test_long_digit_run_found_exactly(text: str) -> None:
    """The numpy scan agrees with the plain definition: LONG_DIGIT_RUN digits in a row, the
    first of them not after a '.' (nor after another digit: the run's own start)."""
    plain = re.search(rf"(?<![.0-9])[0-9]{{{LONG_DIGIT_RUN}}}", text) is not None
    assert _has_long_digit_run(text.encode()) == plain


@pytest.mark.parametrize(
    ("text", "long"),
    [
        (b"[0.0012345677556097507]", False),  # a float32 pixel below 0.01, written in full
        (b"[12345678901234567890]", True),  # an integer past 64 bits
        (b"[-1234567890123456789.5]", True),  # its integer part: to the standard library
        (b"[1e0000000000000000001]", True),  # an exponent's digits, likewise
    ],
)
def test_only_a_fractions_long_run_is_left_to_orjson(text: bytes, long: bool) -> None:
    assert _has_long_digit_run(text) is long
    assert_reads_as_json_does(text)
