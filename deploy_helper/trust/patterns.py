"""Wildcard patterns as IAM's ``ArnLike``/``StringLike`` read them, and containment between them.

In such a pattern ``*`` matches any run of characters (also none), ``?`` exactly one
character, and every other character only itself — ``[`` included, unlike
``fnmatch``. A value in a grant may itself be a pattern (a Lambda permission's
``SourceArn`` is matched with ``ArnLike``), so a rule's pattern allows it only when
it *covers* it: every string the grant's pattern matches, the rule's pattern
matches too. Treating the grant's ``*`` as a character instead would let a rule's
``?`` admit a grant's ``*`` — a far wider grant than the rule meant.

``witness(pattern, value)`` decides this exactly. Both patterns are automata over
the characters: the rule's pattern is determinized on the fly (its states are the
sets of positions it can be at) and run in step with the grant's pattern (one
position at a time); a counterexample is a path to a state where the grant's
pattern has matched and the rule's has not. Where the grant's pattern reads a
wildcard, the search reads a character that appears in neither pattern: only the
rule's wildcards accept such a character, so it leaves the rule's pattern a subset
of the positions any other character would, and if some string escapes the rule's
pattern, the one spelled this way does too. The search is therefore exact over
every alphabet and visits at most (length of the value + 1) times (the position sets of
the rule's pattern) states; past ``MAX_STATES`` the grant is refused.
"""

from __future__ import annotations

import functools
from collections import deque

from deploy_helper.exceptions import DeniedError

WILDCARDS = frozenset("*?")
#: Characters tried, in order, to spell a character that appears in neither pattern.
_SPARE = "xyzXYZ0123456789-_.qjkQJK~!#%&"
#: Product states explored before giving up (refusing the grant): far above what a
#: rule's pattern and a source ARN (at most 900 characters of resource) need, and
#: reached only by contrived patterns; it bounds the work one grant can cause.
MAX_STATES = 20_000

_Other = None  # the stand-in symbol: any character that appears in neither pattern
_Positions = frozenset[int]
#: A state of the search: the grant's position, and the rule's set of positions.
_State = tuple[int, _Positions]


class PatternTooComplexError(DeniedError):
    """Comparing two patterns would take more work than the broker allows; the grant is refused."""


def normalize(pattern: str) -> str:
    """The same language in a canonical shape: each run of wildcards as ``?``s then at most one ``*``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] not in WILDCARDS:
            out.append(pattern[i])
            i += 1
            continue
        j = i
        while j < len(pattern) and pattern[j] in WILDCARDS:
            j += 1
        run = pattern[i:j]
        out.append("?" * run.count("?") + ("*" if "*" in run else ""))
        i = j
    return "".join(out)


def has_wildcards(value: str) -> bool:
    return any(c in WILDCARDS for c in value)


def matches(pattern: str, value: str) -> bool:
    """Whether ``pattern`` matches the literal string ``value`` (its ``*``/``?`` are plain characters)."""
    states = _closure(pattern, (0,))
    for char in value:
        states = _step(pattern, states, char)
        if not states:
            return False
    return len(pattern) in states


def covers(pattern: str, value: str) -> bool:
    """Whether every string the pattern ``value`` matches is matched by ``pattern``."""
    return witness(pattern, value) is None


@functools.lru_cache(maxsize=8192)
def witness(pattern: str, value: str) -> str | None:
    """A string that ``value`` (read as a pattern) matches and ``pattern`` does not; None when there is none.

    Raises ``PatternTooComplexError`` when the comparison would explore more than
    ``MAX_STATES`` states (the caller refuses the grant).
    """
    pattern, value = normalize(pattern), normalize(value)
    if not has_wildcards(value):
        return None if matches(pattern, value) else value
    spare = next((c for c in _SPARE if c not in pattern and c not in value), "\x00")
    step_cache: dict[tuple[_Positions, str | None], _Positions] = {}

    def p_step(states: _Positions, symbol: str | None) -> _Positions:
        key = (states, symbol)
        if key not in step_cache:
            step_cache[key] = _step(pattern, states, symbol)
        return step_cache[key]

    parent: dict[_State, tuple[_State, str | None] | None] = {}
    queue: deque[_State] = deque()
    start = _closure(pattern, (0,))
    for i in _closure(value, (0,)):
        parent[(i, start)] = None
        queue.append((i, start))
    end_p, end_v = len(pattern), len(value)
    # where the grant's pattern can be after reading one character at each position
    moves = [_closure(value, (i if c == "*" else i + 1,)) for i, c in enumerate(value)]
    while queue:
        state = queue.popleft()
        i, states = state
        if i == end_v:
            if end_p not in states:
                return _spell(parent, state, spare)
            continue
        here = value[i]
        read: str | None = _Other if here in WILDCARDS or here not in pattern else here
        after = p_step(states, read)
        for j in moves[i]:
            successor = (j, after)
            if successor not in parent:
                parent[successor] = (state, None if here in WILDCARDS else here)
                queue.append(successor)
        if len(parent) > MAX_STATES:
            raise PatternTooComplexError(
                f"the pattern {value[:80]!r} is too complex to compare with the rule's pattern {pattern[:80]!r}; "
                "use a simpler pattern (fewer wildcards) or an exact value",
                check="pattern-too-complex",
            )
    return None


def _closure(pattern: str, positions: tuple[int, ...] | set[int]) -> _Positions:
    """Positions reachable without reading a character: a ``*`` may match nothing."""
    out: set[int] = set()
    for j in positions:
        while j not in out:
            out.add(j)
            if j < len(pattern) and pattern[j] == "*":
                j += 1
            else:
                break
    return frozenset(out)


def _step(pattern: str, states: _Positions, symbol: str | None) -> _Positions:
    """Positions after reading ``symbol`` (None: a character that is not in the pattern)."""
    nxt: set[int] = set()
    for j in states:
        if j == len(pattern):
            continue
        c = pattern[j]
        if c == "*":
            nxt.add(j)
        elif c == "?" or c == symbol:
            nxt.add(j + 1)
    return _closure(pattern, nxt)


def _spell(parent: dict[_State, tuple[_State, str | None] | None], state: _State, spare: str) -> str:
    """The characters read on the way to ``state``; the stand-in symbol spelled as ``spare``."""
    chars: list[str] = []
    link = parent[state]
    while link is not None:
        state, symbol = link
        chars.append(spare if symbol is None else symbol)
        link = parent[state]
    return "".join(reversed(chars))


def example(value: str) -> str:
    """One string the pattern ``value`` matches (its wildcards spelled as few characters as possible)."""
    spare = next((c for c in _SPARE if c not in value), "\x00")
    return value.replace("*", "").replace("?", spare)


@functools.lru_cache(maxsize=8192)
def arn_witness(pattern: str, arn: str) -> str | None:
    """An ARN that ``arn`` (read as an ``ArnLike`` pattern) matches and ``pattern`` does not, or None.

    ``ArnLike`` compares the six ``:``-separated parts of an ARN one by one (the
    resource part keeps any further ``:``), so ``pattern`` covers ``arn`` exactly
    when each of its parts covers the same part of ``arn``.
    """
    p_parts = pattern.split(":", 5)
    a_parts = arn.split(":", 5)
    if len(p_parts) != 6 or len(a_parts) != 6:
        return example(arn)
    out: list[str] = []
    found = False
    for p, a in zip(p_parts, a_parts, strict=True):
        w = None if found else witness(p, a)
        found = found or w is not None
        out.append(example(a) if w is None else w)
    return ":".join(out) if found else None
