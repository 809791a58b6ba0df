"""The final answer while it is generated: which part of a reply so far the client may see.

:func:`agents.answers.final_answer` reads a *whole* reply: its last ``Answer:`` line if it has one,
else the whole text, then cleaned (no "Answer:" prefix, markdown emphasis, enclosing quotes or a
lone final dot). :class:`AnswerStream` is fed the reply piece by piece and emits text that is a
prefix of that answer, so that the pieces plus :meth:`AnswerStream.close` add up to it exactly.

Nothing in a reply is certain until it ends (any later line may be an ``Answer:`` line that
replaces what came before), so the stream **commits to one line** and emits from it only:

- ``"free"`` (answers asked for directly: the summarizer, the fallback, the no-image answer,
  ``direct``, ``ccot``, ``caption``): the first non-empty line; the answer line's content if it
  is an ``Answer:`` line, else the line itself (the start of a free-text answer);
- ``"line"`` (replies that reason first and end with an ``Answer:`` line, ``cot``): the first
  ``Answer:`` line; the reasoning before it is never emitted;
- ``"hold"`` (multiple choice: the answer is the option letter, known at the end): nothing.

Within the committed line, text is held back while a later character could still change how it
is cleaned: a prefix the cleaner would strip may still be forming ("The ans..."), the line may
still turn into an ``Answer:`` line ("Ans..."), an answer that opens with a quote may end with
the same quote, a trailing ``*`` / ``_`` may pair with the next one (``**`` is removed), trailing
whitespace may be the end, and a single trailing dot may be the one the cleaner drops. Once the
committed line ends, nothing more is emitted until the reply ends; then :meth:`close` is given the
run's answer (``final_answer`` of the whole reply, or the option letter) and returns the rest.

The one case where the pieces cannot add up: the reply has an ``Answer:`` line *after* the
committed line ("Red.\\nAnswer: blue"; or, in a reply over ``MAX_SCAN_CHARS``, the committed
line fell out of the part ``answer_line`` reads). The answer is still ``final_answer`` of the
whole reply (a streamed run answers as a non-streamed one); :meth:`close` returns ``None`` and the
caller notes it (the client has seen the start of the committed line's answer).

The rules themselves stay in ``agents.answers`` (its patterns and ``_unmark`` are reused here, not
restated); the property test in tests/agents/test_answer_stream.py holds the two together.
"""

from __future__ import annotations

import functools
import re
import string
from typing import Literal

import regex

from agents.answers import _ANSWER_LINE, _PREFIXES, _unmark, clean_answer

StreamMode = Literal["free", "line", "hold"]
_QUOTES = "\"'`"


def _partial(pattern: re.Pattern[str]) -> regex.Pattern[str]:
    return regex.compile(pattern.pattern, regex.IGNORECASE if pattern.flags & re.I else 0)


#: the patterns of agents.answers, compiled by the ``regex`` module for partial matching ("could
#: the text so far still become a match?"); they only ever see :func:`_shadow` text
_PREFIX_PARTIAL = _partial(_PREFIXES)
_ANSWER_LINE_PARTIAL = _partial(_ANSWER_LINE)
#: the characters the two patterns name besides letters, whitespace and \w / \W
_KEPT = ",:：\n"


@functools.lru_cache(maxsize=4096)
def _stand_in(char: str) -> str:
    """An ASCII character (or one of _KEPT) that ``re`` classes as it classes ``char`` for
    the two patterns: the same letter under IGNORECASE, whitespace, a word or non-word char."""
    if char in _KEPT or (char.isascii() and char.isalpha()):
        return char
    for letter in string.ascii_lowercase:  # "K" (Kelvin) is a "k" to re.IGNORECASE
        if re.fullmatch(letter, char, re.I):
            return letter
    if re.fullmatch(r"\s", char):
        return " "
    return "0" if re.fullmatch(r"\w", char) else "#"


def _shadow(text: str) -> str:
    """``text`` with every character replaced by its stand-in, so that the ``regex`` module
    (whose Unicode classes and case folding differ from ``re``'s) answers as ``re`` would."""
    return "".join(map(_stand_in, text))


def settled(text: str) -> str:
    """The longest prefix of ``clean_answer(text + more)`` that no ``more`` can change."""
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] in "*_"):
        end -= 1  # "**" / "__" pairs are removed, trailing whitespace is stripped: undecided
    answer = _unmark(text[:end])
    for _ in range(4):  # clean_answer's loop, on the part that is decided
        previous = answer
        if not answer or _PREFIX_PARTIAL.fullmatch(_shadow(answer), partial=True) is not None:
            return ""  # all of it may yet be a prefix the cleaner strips
        answer = _PREFIXES.sub("", answer, count=1).strip()
        if not answer or answer[0] in _QUOTES:
            return ""  # nothing left yet, or quotes that may close at the very end
        if answer == previous:
            break
    if answer.count(".") == 1 and answer.endswith("."):
        return answer[:-1].rstrip()  # the lone final dot is dropped if nothing follows
    return answer


class AnswerStream:
    """Feed a reply as it is generated; emit what the client may see of its answer."""

    def __init__(self, mode: StreamMode) -> None:
        self.mode = mode
        self.text = ""  # the reply so far
        self.emitted = ""  # everything returned by feed()
        #: the committed line ended (or cannot be streamed): nothing more until close()
        self.frozen = mode == "hold"
        self._line_start = 0  # "line" mode: where the first line not yet ruled out starts

    def feed(self, piece: str) -> str:
        """Add ``piece`` of the reply; returns the text newly safe to show (often "")."""
        self.text += piece
        if self.frozen or not piece:
            return ""
        safe = self._free() if self.mode == "free" else self._line()
        if len(safe) <= len(self.emitted) or not safe.startswith(self.emitted):
            return ""  # (a shorter or different reading never un-sends what was sent)
        new, self.emitted = safe[len(self.emitted) :], safe
        return new

    def close(self, answer: str) -> str | None:
        """The rest of ``answer`` after what was emitted; None when the emitted text is not its
        start (the reply wrote an ``Answer:`` line after the committed line)."""
        self.frozen = True
        if not answer.startswith(self.emitted):
            return None
        return answer[len(self.emitted) :]

    # ------------------------------------------------------------------------------ readings

    def _free(self) -> str:
        """The first non-empty line: an answer line's content, or the start of a free answer."""
        body = self.text.lstrip()
        lines = body.splitlines(keepends=True)
        if not lines:
            return ""
        line = lines[0].splitlines()[0]
        if len(lines) > 1 or line != lines[0]:  # the line is complete
            self.frozen = True
            match = _ANSWER_LINE.match(_unmark(line))
            if match is None:
                return settled(line)  # a free answer: more lines may follow
            content = match.group(1).strip()
            return clean_answer(content) if content else ""
        return self._open_line(line, free=True)

    def _line(self) -> str:
        """The first ``Answer:`` line's content; lines before it are reasoning."""
        lines = self.text[self._line_start :].splitlines(keepends=True)
        for raw in lines:
            line = raw.splitlines()[0]
            if line == raw:  # the last line, not complete yet
                return self._open_line(line, free=False)
            match = _ANSWER_LINE.match(_unmark(line))
            if match is not None:
                self.frozen = True
                content = match.group(1).strip()
                return clean_answer(content) if content else ""  # "Answer:" alone: at the end
            self._line_start += len(raw)
        return ""

    def _open_line(self, line: str, *, free: bool) -> str:
        """What is settled of a line still being written."""
        end = len(line)
        while end and (line[end - 1].isspace() or line[end - 1] in "*_"):
            end -= 1
        unmarked = _unmark(line[:end])
        match = _ANSWER_LINE_PARTIAL.match(_shadow(unmarked), partial=True)
        if match is None:  # no continuation makes it an answer line
            return settled(line) if free else ""
        if match.partial:
            return ""  # it may still become an answer line ("Final ans...")
        return settled(unmarked[match.start(1) :].strip())
