"""Bash-style brace expansion of shard URLs, as the `braceexpand` package that webdataset
uses does it: nested `{a,b{1..2}}`, integer and letter ranges with an optional step
(`{0..10..2}`, `{a..e}`), zero padding when a bound has a leading zero, `\\{` for a
literal brace; `{a}` and `{}` stay as written."""
from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterator

_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ESCAPED = re.compile(r"\\(.)")
_LETTERS = string.ascii_uppercase + string.ascii_lowercase


def expand_braces(pattern: str) -> list[str]:
    return [_ESCAPED.sub(r"\1", "".join(parts)) for parts in itertools.product(*_pieces(pattern))]


def _marks(text: str) -> Iterator[tuple[int, str, int]]:
    """(position, character, depth outside it) of each brace and comma not escaped."""
    depth = pos = 0
    while pos < len(text):
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "}":
            depth -= 1
        if c in "{},":
            yield pos, c, depth
        if c == "{":
            depth += 1
        pos += 1
    if depth:
        raise ValueError(f"unbalanced braces in {text!r}")


def _pieces(pattern: str) -> list[list[str]]:
    """The pattern as a sequence of choice lists: literal text (one choice each) and the
    expansions of its top-level brace groups."""
    pieces: list[list[str]] = []
    start = 0
    for pos, c, depth in _marks(pattern):
        if c == "{" and depth == 0:
            if pos > start:
                pieces.append([pattern[start:pos]])
            start = pos
        elif c == "}" and depth == 0:
            body = pattern[start + 1:pos]
            choices = _group(body)
            if choices is None:  # no comma and no range: literal braces around it
                pieces += [["{"], expand_braces(body), ["}"]]
            else:
                pieces.append(choices)
            start = pos + 1
    if start < len(pattern):
        pieces.append([pattern[start:]])
    return pieces


def _group(body: str) -> list[str] | None:
    """The choices of one brace group's body, or None when it is neither a range nor a
    comma-separated list."""
    m = _INT_RANGE.match(body)
    if m:
        lo, hi, step = m.groups()
        padded = any(b.lstrip("-").startswith("0") for b in (lo, hi) if b.lstrip("-") != "0")
        width = max(len(lo), len(hi)) if padded else 0
        return [f"{i:0{width}d}" for i in _steps(int(lo), int(hi), step)]
    m = _CHAR_RANGE.match(body)
    if m:  # through A..Z then a..z
        lo, hi, step = m.groups()
        return [_LETTERS[i] for i in _steps(_LETTERS.index(lo), _LETTERS.index(hi), step)]
    alternatives: list[str] = []
    start = 0
    for pos, c, depth in _marks(body):
        if c == "," and depth == 0:
            alternatives.append(body[start:pos])
            start = pos + 1
    if not alternatives:
        return None
    alternatives.append(body[start:])
    # each alternative is unescaped on its own and again with the whole, as braceexpand
    # does (a doubled backslash inside a group comes out as none)
    return [s for alt in alternatives for s in expand_braces(alt)]


def _steps(lo: int, hi: int, step: str | None) -> range:
    n = int(step) if step else 1
    n = n or 1
    return range(lo, hi + 1, n) if lo <= hi else range(lo, hi - 1, -n)
