"""Prompt-weighting syntax, parsed once into weighted text spans and window breaks.

Two dialects, the ones diffusers users already write:

**A1111** (AUTOMATIC1111 / Forge / sd_embed)::

    (word)        ×1.1          ((word))     ×1.21 (nesting multiplies)
    [word]        ÷1.1          (word:1.5)   ×1.5 (a number after the last ':' inside round brackets)
    \\( \\) \\[ \\] \\\\  literal brackets and backslash
    BREAK         ends the current 77-token window (upper case, a word on its own)

**compel** (compel / InvokeAI)::

    word+  word++   ×1.1, ×1.21 (one factor per sign)     word-  word--   ×0.9, ×0.81
    (two words)+    a group, same signs                     (two words)1.3  a group at weight 1.3
    (group)         plain grouping (×1)                     \\( \\)  literal brackets
    BREAK           ends the current window (as in A1111; compel itself has no BREAK)

compel's ``.blend()``, ``.and()`` and ``.swap()`` are refused with a clear error (not supported).

``dialect="none"`` reads the prompt as plain text (what the pipeline itself does). Malformed input
never crashes: an unbalanced bracket is a :class:`PromptSyntaxError` that names the position and says
how to write the bracket literally; a weight that is not finite or outside ``[-MAX_WEIGHT, MAX_WEIGHT]``
(compel: ``[0, MAX_WEIGHT]``) is refused. A prompt with no words (empty, or only ``BREAK``) is
refused by :func:`parse_prompt`; :func:`parse_negative` accepts the empty prompt (the pipeline's
default negative). ``(word:abc)`` has no number after the colon and reads as ``word:abc`` ×1.1, as in
A1111.

The result is a list of *windows* (split at ``BREAK``), each a list of :class:`Fragment` — adjacent
spans of equal weight merged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pentachora.errors import ConfigError

__all__ = [
    "DIALECTS",
    "MAX_WEIGHT",
    "Fragment",
    "PromptSyntaxError",
    "has_weighting",
    "parse_negative",
    "parse_prompt",
]

DIALECTS = ("a1111", "compel", "none")
"""Weighting dialects: AUTOMATIC1111's, compel's, or plain text."""

MAX_WEIGHT = 10.0
"""Largest absolute weight accepted (nesting included); more is almost surely a typo (``1e9``)."""

_A1111_UP, _COMPEL_UP, _COMPEL_DOWN = 1.1, 1.1, 0.9
_BREAK = re.compile(r"(?<!\S)BREAK(?!\S)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_COMPEL_CALLS = re.compile(r"\)\s*\.\s*(blend|and|swap)\s*\(")


class PromptSyntaxError(ConfigError):
    """A prompt's weighting syntax is malformed (unbalanced brackets, a bad weight)."""


@dataclass(frozen=True)
class Fragment:
    """A span of prompt text and its weight (1.0 = unweighted)."""

    text: str
    weight: float = 1.0


def has_weighting(prompt: str, dialect: str = "a1111") -> bool:
    """Whether parsing ``prompt`` in ``dialect`` gives any weight other than 1 or a ``BREAK``."""
    windows = parse_negative(prompt, dialect)
    return len(windows) > 1 or any(f.weight != 1.0 for w in windows for f in w)


def parse_prompt(prompt: str, dialect: str = "a1111") -> list[list[Fragment]]:
    """Parse a positive prompt into windows of weighted fragments.

    Args:
        prompt: The prompt text.
        dialect: ``"a1111"``, ``"compel"`` or ``"none"`` (plain text).

    Returns:
        One list of :class:`Fragment` per window (``BREAK`` starts a new one; empty windows dropped).

    Raises:
        PromptSyntaxError: Malformed syntax or a bad weight (the message names the position).
        ConfigError: An unknown dialect, or a prompt with no words (empty, or only ``BREAK``).
    """
    windows = parse_negative(prompt, dialect)
    if not any(f.text.strip() for w in windows for f in w):
        raise ConfigError(
            f"the prompt {prompt[:40]!r} has no words"
            + (" (only BREAK)" if _BREAK.search(prompt or "") else "")
            + "; describe the image, e.g. 'a red cube on a table'"
        )
    return windows


def parse_negative(prompt: str, dialect: str = "a1111") -> list[list[Fragment]]:
    """Like :func:`parse_prompt` but an empty prompt is allowed (``[[Fragment("")]]``)."""
    if dialect not in DIALECTS:
        raise ConfigError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    if not isinstance(prompt, str):
        raise ConfigError(f"a prompt must be a string, got {type(prompt).__name__}")
    if dialect == "none":
        return [[Fragment(prompt)]]
    windows: list[list[Fragment]] = []
    pos = 0
    for m in [*_BREAK.finditer(prompt), None]:
        end = m.start() if m else len(prompt)
        part = prompt[pos:end]
        frags = _parse_a1111(part, pos) if dialect == "a1111" else _parse_compel(part, pos)
        if any(f.text.strip() for f in frags):
            windows.append(frags)
        pos = m.end() if m else end
    return windows or [[Fragment("")]]


# ----------------------------------------------------------------------------- shared
def _check_weight(value: float, where: int, lowest: float) -> float:
    if not math.isfinite(value) or not lowest <= value <= MAX_WEIGHT:
        raise PromptSyntaxError(
            f"weight {value!r} at character {where} is outside [{lowest:g}, {MAX_WEIGHT:g}] or not finite "
            "(nesting multiplies weights); if the brackets are text, write them as '\\(' and '\\)'"
        )
    return float(value)


def _merge(spans: list[tuple[str, float]]) -> list[Fragment]:
    out: list[Fragment] = []
    for text, weight in spans:
        if not text:
            continue
        if out and out[-1].weight == weight:
            out[-1] = Fragment(out[-1].text + text, weight)
        else:
            out.append(Fragment(text, weight))
    return out or [Fragment("")]


def _unbalanced(kind: str, where: int) -> PromptSyntaxError:
    return PromptSyntaxError(
        f"unbalanced {kind!r} at character {where}; write a literal bracket as '\\{kind}'"
    )


class _Spans:
    """Weighted text spans built character by character (both dialects): a closing bracket scales
    every span since its group opened, so nesting multiplies."""

    def __init__(self) -> None:
        self.spans: list[list] = []  # [text, weight]
        self.buf: list[str] = []

    def flush(self) -> int:
        """End the current span; the index the next span will have (a group's start mark)."""
        if self.buf:
            self.spans.append(["".join(self.buf), 1.0])
            self.buf.clear()
        return len(self.spans)

    def scale_from(self, start: int, factor: float) -> None:
        self.flush()
        for span in self.spans[start:]:
            span[1] *= factor

    def fragments(self, offset: int, lowest: float) -> list[Fragment]:
        self.flush()
        for span in self.spans:
            _check_weight(span[1], offset, lowest)
        return _merge([(t, round(w, 12)) for t, w in self.spans])


def _escaped(text: str, i: int) -> bool:
    """Whether ``text[i]`` is a backslash escaping the next character."""
    return text[i] == "\\" and i + 1 < len(text)


# ----------------------------------------------------------------------------- A1111
def _parse_a1111(text: str, offset: int) -> list[Fragment]:
    """A1111's grammar: a stack of open brackets, each closing bracket applies its factor."""
    out = _Spans()
    stack: list[tuple[str, int, int]] = []  # (bracket, span index where it opened, position)
    i = 0
    while i < len(text):
        ch = text[i]
        if _escaped(text, i):
            out.buf.append(text[i + 1])
            i += 2
            continue
        if ch in "([":
            stack.append((ch, out.flush(), offset + i))
        elif ch in ")]":
            want = "(" if ch == ")" else "["
            if not stack or stack[-1][0] != want:
                raise _unbalanced(ch, offset + i)
            factor = _A1111_UP if ch == ")" else 1.0 / _A1111_UP
            if ch == ")":  # (text:number): the number after the last ':' of the group's own text
                head, colon, tail = "".join(out.buf).rpartition(":")
                if colon and _NUMBER.fullmatch(tail.strip()):
                    factor = _check_weight(float(tail.strip()), offset + i, -MAX_WEIGHT)
                    out.buf[:] = list(head)
            out.scale_from(stack.pop()[1], factor)
        else:
            out.buf.append(ch)
        i += 1
    if stack:
        raise _unbalanced(stack[-1][0], stack[-1][2])
    return out.fragments(offset, -MAX_WEIGHT)


# ----------------------------------------------------------------------------- compel
_SIGNS = re.compile(r"[+-]+")


def _sign_weight(signs: str) -> float:
    """compel's ``+`` (×1.1) and ``-`` (×0.9), one factor per sign."""
    return _COMPEL_UP ** signs.count("+") * _COMPEL_DOWN ** signs.count("-")


def _sign_run_end(text: str, i: int) -> int:
    """End of the run of ``+``/``-`` starting at ``text[i]`` (itself a sign)."""
    m = _SIGNS.match(text, i)
    return m.end() if m else i


def _parse_compel(text: str, offset: int) -> list[Fragment]:
    """compel's weighting (a subset): ``word++``, ``(group)--``, ``(group)1.3``, plain groups."""
    call = _COMPEL_CALLS.search(text)
    if call:
        raise PromptSyntaxError(
            f"compel's .{call.group(1)}() at character {offset + call.start() + 1} is not supported; "
            "write one prompt with weights instead"
        )

    def word_end(j: int) -> bool:
        return j == len(text) or not text[j].isalnum()

    def suffix(j: int) -> tuple[float | None, int]:
        """A weight suffix at text[j:]: signs or a number, followed by a word end."""
        m = _SIGNS.match(text, j)
        if m and word_end(m.end()):
            return _sign_weight(m.group(0)), m.end()
        m = _NUMBER.match(text, j)
        if m and word_end(m.end()):
            return float(m.group(0)), m.end()
        return None, j

    out = _Spans()
    stack: list[tuple[int, int]] = []  # (span index where the group opened, position)
    i = 0
    while i < len(text):
        ch = text[i]
        if _escaped(text, i):
            out.buf.append(text[i + 1])
            i += 2
        elif ch == "(":
            stack.append((out.flush(), offset + i))
            i += 1
        elif ch == ")":
            if not stack:
                raise _unbalanced(")", offset + i)
            start, _ = stack.pop()
            weight, j = suffix(i + 1)
            out.scale_from(start, 1.0 if weight is None else _check_weight(weight, offset + i + 1, 0.0))
            i = j if weight is not None else i + 1
        elif ch in "+-" and out.buf and out.buf[-1].isalnum() and word_end(end := _sign_run_end(text, i)):
            # word++ : the signs weight the word just before them
            word = "".join(out.buf)
            k = len(word)
            while k > 0 and (word[k - 1].isalnum() or word[k - 1] in "_'"):
                k -= 1
            out.buf[:] = list(word[:k])
            out.flush()
            out.spans.append([word[k:], _check_weight(_sign_weight(text[i:end]), offset + i, 0.0)])
            i = end
        else:
            out.buf.append(ch)
            i += 1
    if stack:
        raise _unbalanced("(", stack[-1][1])
    return out.fragments(offset, 0.0)
