"""AnswerStream: what is streamed of a final answer adds up to final_answer of the whole reply."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.answer_stream import AnswerStream, StreamMode, settled
from agents.answers import _ANSWER_LINE, _unmark, clean_answer, final_answer

#: pieces replies are made of: the cleaner's prefixes and answer lines, markdown, quotes, dots,
#: line breaks of every kind splitlines knows, words
FRAGMENTS = [
    "Answer:", "answer", "Answer", "ANSWER :", "Final answer:", "final", "The answer is",
    "the answer is:", "So, the answer is", "Therefore the correct answer is", "correct", "is",
    "the", "The", ":", "：", "**", "*", "__", "_", '"', "'", "`", ".", "..", " ", "  ", "\t",
    "\n", "\r\n", "\r", "\n\n", "\u2028", "\x1c", "-", "#", "(", ")", "red", "blue square", "A",
    "B.", "12.5", "x", "so", "hence,",
]  # fmt: skip

replies = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=24).map(
    "".join
)
modes = st.sampled_from(["free", "line", "hold"])


def _first_answer_line(lines: list[str]) -> str | None:
    """The content of the first answer line (None: there is none)."""
    for line in lines:
        match = _ANSWER_LINE.match(_unmark(line))
        if match:
            return match.group(1).strip()
    return None


def committed_answer(reply: str, mode: StreamMode) -> str:
    """What the answer is if the reply has no answer line after the one the stream commits to
    (the documented assumption), written as a whole-text oracle."""
    whole = final_answer(reply)
    lines = reply.strip().splitlines()
    if mode == "hold" or not lines:
        return whole
    if mode == "free":
        content = _first_answer_line(lines[:1])
        if content is None:
            return clean_answer(reply)  # a free answer: the whole text
        return clean_answer(content) if content else whole
    content = _first_answer_line(lines)
    return clean_answer(content) if content else whole


def run(reply: str, cuts: list[int], mode: StreamMode) -> tuple[list[str], str | None]:
    stream = AnswerStream(mode)
    bounds = [0, *sorted(set(cuts)), len(reply)]
    pieces = []
    for a, b in itertools.pairwise(bounds):
        pieces.append(stream.feed(reply[a:b]))
        assert stream.emitted == "".join(pieces)
    return pieces, stream.close(final_answer(reply))


@settings(max_examples=3000, deadline=None)
@given(reply=replies, mode=modes, data=st.data())
def test_streamed_pieces_add_up_to_the_answer_of_the_whole_reply(
    reply: str, mode: StreamMode, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(reply)), max_size=len(reply) + 1))
    pieces, tail = run(reply, cuts, mode)
    emitted = "".join(pieces)
    expected = committed_answer(reply, mode)
    # never a character the committed reading does not end with
    assert expected.startswith(emitted), (reply, emitted, expected)
    answer = final_answer(reply)
    if answer == expected:  # no answer line after the committed one: they add up exactly
        assert tail is not None and emitted + tail == answer
    # the documented exception (a later answer line changed the answer) is reported, never hidden
    assert (tail is None) == (not answer.startswith(emitted))


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=30), more=st.text(max_size=10))
def test_settled_is_a_prefix_of_every_continuation(text: str, more: str) -> None:
    assert clean_answer(text + more).startswith(settled(text))


def words(reply: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", reply)


def stream_of(reply: str, mode: StreamMode) -> list[str]:
    stream = AnswerStream(mode)
    pieces = [p for p in (stream.feed(w) for w in words(reply)) if p]
    tail = stream.close(final_answer(reply))
    assert tail is not None
    return [*pieces, tail] if tail else pieces


@pytest.mark.parametrize(
    ("reply", "mode", "before_close"),
    [
        ("The red square is left of the blue circle.", "free", 8),
        ("**Answer:** the red square is left of the blue circle", "free", 8),
        ("Step 1: a square.\nStep 2: it is red.\nAnswer: the red square, on the left.", "line", 5),
        ("A short thought.\nAnswer: B", "hold", 0),
    ],
)
def test_a_typical_answer_streams_word_by_word(
    reply: str, mode: StreamMode, before_close: int
) -> None:
    stream = AnswerStream(mode)
    pieces = [p for p in (stream.feed(w) for w in words(reply)) if p]
    assert len(pieces) == before_close
    assert "".join(pieces) + (stream.close(final_answer(reply)) or "") == final_answer(reply)


def test_reasoning_before_the_answer_line_is_never_shown() -> None:
    reply = "Step 1: the square is red.\nStep 2: the circle is blue.\nAnswer: red"
    assert "".join(stream_of(reply, "line")) == "red"
    assert "Step" not in AnswerStream("line").feed(reply[:40])


def test_what_cleaning_may_still_strip_is_held_back() -> None:
    stream = AnswerStream("free")
    assert stream.feed("The ans") == ""  # may become "The answer is ..."
    assert stream.feed("wer is") == ""
    assert stream.feed(" red") == "red"
    assert stream.feed(".") == ""  # the lone final dot, dropped if nothing follows
    assert stream.feed(" **") == ""
    assert stream.feed("Really**") == ". Really"
    assert stream.close("red. Really") == ""
    quoted = AnswerStream("free")
    assert quoted.feed('"the red one') == ""  # the closing quote would be stripped
    assert quoted.close(final_answer('"the red one"')) == "the red one"


def test_an_answer_line_after_the_committed_line_is_reported() -> None:
    stream = AnswerStream("free")
    assert stream.feed("Red.\n") == "Red"
    assert stream.feed("Wait, no.\nAnswer: blue") == ""
    assert stream.close(final_answer(stream.text)) is None
