"""Scripted answers of the simulated engine: recognise the ProReason role of a call, answer it.

The engine is told nothing about the caller. It recognises each role from stable markers, never
from the prompts' wording (which ``configs/prompts/*.yaml`` owns and may change):

- the benchmark's questions carry ``[q=<id>]`` (and optionally ``[scenario=<name>]``);
- the **dispatcher** is asked for a JSON object with an ``"expert"`` key (in its text, or in the
  ``response_format`` JSON schema); the parallel-perception dispatcher for a ``"questions"`` list;
- the **referee** is asked for a ``"solvable"`` key;
- the sub-questions the sim's own dispatcher writes carry ``(q <id>, fact <n>)`` or
  ``(q <id>, insight <n>)``: with an image part that is the **vision expert**, without one the
  **insight expert**;
- an image with the original question is the **fallback** (direct answer); a text-only call with
  the original question is the **summarizer**.

Progress is read back from the memory in the prompt: vision answers carry ``SIMFACT#<n>`` and
insight answers ``SIMINSIGHT#<n>``. The only state kept is a per-question count of dispatcher
calls (for scripted parse failures).

Every answer is padded to the scenario's completion-token count for the role (4 characters per
token), so the decode cost of a question is known in advance.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

QID = re.compile(r"\[q=([\w.-]+)\]")
SCENARIO = re.compile(r"\[scenario=([\w-]+)\]")
SUBQ = re.compile(r"\(q ([\w.-]+), (fact|insight) (\d+)\)")
FACT = re.compile(r"SIMFACT#(\d+)")
INSIGHT = re.compile(r"SIMINSIGHT#(\d+)")

ROLES = ("dispatcher", "vision", "insight", "referee", "summarizer", "fallback", "direct")

DEFAULT_TOKENS: dict[str, int] = {
    "dispatcher": 32,
    "vision": 96,
    "insight": 96,
    "referee": 48,
    "summarizer": 24,
    "fallback": 24,
    "direct": 24,
}

_FILLER = (
    "the notes are consistent with what was observed and nothing contradicts them so far "
    "while every detail was checked against the picture once more "
)


@dataclass(frozen=True)
class Scenario:
    """What the scripted models do for one question."""

    name: str
    #: distinct visual facts the referee wants in memory before it says "solvable"
    facts: int = 2
    #: insight conclusions wanted after the facts
    insights: int = 0
    #: dispatcher calls (0-based, per question) answered with unparseable prose
    parse_failures: tuple[int, ...] = ()
    #: the referee never says solvable: the loop ends with the max-rounds fallback
    never_solve: bool = False
    #: completion tokens per role
    tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TOKENS))
    description: str = ""

    def expected_calls(
        self, *, parallel: bool = False, max_parallel: int = 3, max_rounds: int = 8
    ) -> dict[str, int]:
        """Model calls per role the faithful loop (or parallel perception) makes on this script."""
        calls = dict.fromkeys(ROLES, 0)
        facts, insights, rounds, dispatch = 0, 0, 0, 0
        while rounds < max_rounds:
            rounds += 1
            calls["dispatcher"] += 1
            dispatch += 1
            if dispatch - 1 in self.parse_failures:
                continue
            if facts < self.facts or (self.never_solve and insights >= self.insights):
                n = min(self.facts - facts, max_parallel) if parallel else 1
                n = max(n, 1)
                calls["vision"] += n
                facts += n
            else:
                calls["insight"] += 1
                insights += 1
            calls["referee"] += 1
            if not self.never_solve and facts >= self.facts and insights >= self.insights:
                calls["summarizer"] += 1
                return calls
        calls["fallback"] += 1
        return calls


def _tokens(base: dict[str, int] | None = None, **over: int) -> dict[str, int]:
    out = dict(base or DEFAULT_TOKENS)
    out.update(over)
    return out


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("solve2", facts=2, description="two visual facts, solved after 2 rounds"),
        Scenario("solve1", facts=1, description="one visual fact, solved after 1 round"),
        Scenario(
            "insight",
            facts=2,
            insights=1,
            description="two visual facts then one insight, solved after 3 rounds",
        ),
        Scenario(
            "parse_fail",
            facts=2,
            parse_failures=(0,),
            description="the first dispatcher answer is unparseable; solved after 3 rounds",
        ),
        Scenario(
            "max_rounds",
            facts=2,
            never_solve=True,
            description="the referee never says solvable: max-rounds fallback",
        ),
        Scenario(
            "multi_fact",
            facts=3,
            description="three independent visual facts (parallel perception asks them at once)",
        ),
        Scenario(
            "multi_fact4",
            facts=4,
            insights=1,
            description="four visual facts and one insight",
        ),
        Scenario(
            "long",
            facts=2,
            tokens=_tokens(dispatcher=48, vision=256, insight=192, referee=80, summarizer=32),
            description="two visual facts with longer, more realistic answers",
        ),
    )
}

#: ``mixed`` picks one of these per question id (deterministically)
MIXED = ("solve2", "insight", "parse_fail", "solve1", "multi_fact", "solve2", "max_rounds")


def scenario_for(name: str, qid: str | None) -> Scenario:
    if name == "mixed":
        key = sum(map(ord, qid or ""))
        return SCENARIOS[MIXED[key % len(MIXED)]]
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {[*SCENARIOS, 'mixed']}") from None


# --------------------------------------------------------------------------- reading a request


@dataclass
class ParsedPrompt:
    """What the engine needs from a chat request."""

    texts: list[str]  # every text part, in order (system first)
    images: list[str]  # image URLs, in order
    parts: list[tuple[str, str]]  # ("text" | "image", content) in prompt order, for prefix keys
    schema_keys: frozenset[str]
    schema_max_items: int | None

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


class BadRequest(ValueError):
    """The request is not a chat-completion request the engine can serve."""


def parse_request(body: Any) -> ParsedPrompt:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    texts: list[str] = []
    images: list[str] = []
    parts: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest("every message needs a 'role'")
        content = message.get("content")
        role = str(message["role"])
        if isinstance(content, str):
            texts.append(content)
            parts.append(("text", role + ":" + content))
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("content parts must be objects")
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                    parts.append(("text", role + ":" + texts[-1]))
                elif part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url")
                    if not isinstance(url, str) or not url:
                        raise BadRequest("image_url parts need image_url.url")
                    images.append(url)
                    parts.append(("image", url))
                else:
                    raise BadRequest(f"unsupported content part type {part.get('type')!r}")
        elif content is not None:
            raise BadRequest("'content' must be a string or a list of parts")
    keys, max_items = _schema_keys(body.get("response_format"))
    return ParsedPrompt(texts, images, parts, keys, max_items)


def _schema_keys(response_format: Any) -> tuple[frozenset[str], int | None]:
    if not isinstance(response_format, dict):
        return frozenset(), None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return frozenset(), None
    keys: set[str] = set()
    max_items: int | None = None
    stack: list[Any] = [schema]
    while stack:  # every property name anywhere in the schema (oneOf / anyOf branches included)
        node = stack.pop()
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                keys.update(props)
                questions = props.get("questions")
                if isinstance(questions, dict) and isinstance(questions.get("maxItems"), int):
                    max_items = questions["maxItems"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(keys), max_items


# --------------------------------------------------------------------------- the script


@dataclass
class Answer:
    role: str
    text: str
    qid: str | None


class Script:
    """Recognises roles and writes the scripted answers for one engine (default scenario)."""

    def __init__(self, scenario: str = "solve2", *, state_size: int = 100_000) -> None:
        scenario_for(scenario, None if scenario != "mixed" else "0")  # validate the name
        self.scenario = scenario
        self._dispatches: OrderedDict[str, int] = OrderedDict()
        self._state_size = state_size

    def reset(self) -> None:
        self._dispatches.clear()

    def role_of(self, prompt: ParsedPrompt) -> tuple[str, str | None, tuple[str, int] | None]:
        """(role, question id, (kind, n) of a sim sub-question if any)."""
        text = prompt.text
        qid_match = QID.search(text)
        # the expert's own sub-question: the newest one (memory may quote earlier ones)
        subs = SUBQ.findall(text)
        kind = "fact" if prompt.images else "insight"
        mine = [s for s in subs if s[1] == kind] or subs
        sub = max(mine, key=lambda s: int(s[2])) if mine else None
        qid = qid_match.group(1) if qid_match else (sub[0] if sub else None)
        keys = prompt.schema_keys
        if "expert" in keys or '"expert"' in text:
            return "dispatcher", qid, None
        if "solvable" in keys or '"solvable"' in text:
            return "referee", qid, None
        if qid_match is None and sub is not None:
            role = "vision" if prompt.images else "insight"
            return role, qid, (sub[1], int(sub[2]))
        if prompt.images:
            return "fallback", qid, None
        if FACT.search(text) or INSIGHT.search(text):
            return "summarizer", qid, None
        return "direct", qid, None

    def answer(self, prompt: ParsedPrompt) -> Answer:
        role, qid, sub = self.role_of(prompt)
        scenario_match = SCENARIO.search(prompt.text)
        scenario = scenario_for(scenario_match.group(1) if scenario_match else self.scenario, qid)
        budget = scenario.tokens.get(role, DEFAULT_TOKENS[role])
        text = prompt.text
        facts = {int(n) for n in FACT.findall(text)}
        insights = {int(n) for n in INSIGHT.findall(text)}
        q = qid or "?"
        if role == "dispatcher":
            body = self._dispatch(scenario, prompt, q, facts, insights, budget)
        elif role == "referee":
            solvable = (
                not scenario.never_solve
                and len(facts) >= scenario.facts
                and len(insights) >= scenario.insights
            )
            reasoning = (
                f"The notes hold {len(facts)} visual fact(s) and {len(insights)} conclusion(s); "
                + ("that is enough to answer" if solvable else "more is needed")
            )
            body = _json_padded({"solvable": solvable, "reasoning": reasoning}, "reasoning", budget)
        elif role == "vision":
            n = sub[1] if sub else 0
            body = _padded(
                f"Step 1: I look at the image. Step 2: SIMFACT#{n} for q {q}: shape {n} is there.",
                budget,
            )
        elif role == "insight":
            n = sub[1] if sub else 0
            body = _padded("Reasoning over the notes step by step:", budget - 8)
            body += f"\nFinal answer: SIMINSIGHT#{n} for q {q}."
        elif role == "summarizer":
            body = _padded(f"SIMANSWER for q {q} from {len(facts)} fact(s).", budget)
        else:  # fallback / direct
            body = _padded(f"SIMDIRECT answer for q {q}.", budget)
        return Answer(role=role, text=body, qid=qid)

    def _dispatch(
        self,
        scenario: Scenario,
        prompt: ParsedPrompt,
        q: str,
        facts: set[int],
        insights: set[int],
        budget: int,
    ) -> str:
        count = self._dispatches.pop(q, 0)
        self._dispatches[q] = count + 1
        while len(self._dispatches) > self._state_size:
            self._dispatches.popitem(last=False)
        if count in scenario.parse_failures:
            return _padded("Let me think about which expert to consult next and why", budget)
        parallel = "questions" in prompt.schema_keys or '"questions"' in prompt.text
        missing = [n for n in range(1, scenario.facts + 1) if n not in facts]
        if not missing and scenario.never_solve and len(insights) >= scenario.insights:
            missing = [max(facts, default=0) + 1]  # keep looking: the referee is never satisfied
        if missing:
            if parallel:
                limit = prompt.schema_max_items or len(missing)
                asks = [_subq(q, "fact", n) for n in missing[:limit]]
                return _json_padded({"expert": "vision", "questions": asks}, None, budget)
            decision = {"expert": "vision", "question": _subq(q, "fact", missing[0])}
            return _json_padded(decision, None, budget)
        n = len(insights) + 1
        return _json_padded({"expert": "insight", "question": _subq(q, "insight", n)}, None, budget)


def _subq(q: str, kind: str, n: int) -> str:
    if kind == "fact":
        return f"(q {q}, fact {n}) What does visual detail {n} of the image show?"
    return f"(q {q}, insight {n}) What follows from the visual notes so far?"


def _padded(text: str, tokens: int) -> str:
    """``text`` lengthened with filler words to about ``tokens`` * 4 characters."""
    want = max(tokens, 1) * 4
    if len(text) >= want:
        return text
    filler = (_FILLER * (want // len(_FILLER) + 1))[: want - len(text) - 1]
    return text + " " + filler.rstrip()


def _json_padded(obj: dict[str, Any], pad_key: str | None, tokens: int) -> str:
    raw = json.dumps(obj)
    if pad_key is None or len(raw) >= tokens * 4:
        return raw
    obj = dict(obj)
    obj[pad_key] = _padded(str(obj[pad_key]), tokens - (len(raw) - len(str(obj[pad_key]))) // 4)
    return json.dumps(obj)


def tokenize(text: str, chars_per_token: int = 4) -> list[str]:
    """The answer split into the engine's tokens (``chars_per_token`` characters each)."""
    if not text:
        return [""]
    return [text[i : i + chars_per_token] for i in range(0, len(text), chars_per_token)]
