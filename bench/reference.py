"""The reference way, as a baseline: ProReason run like the released research scripts.

One question at a time; every model call is a blocking HTTP request made with a NEW HTTP client
(a new connection, no pooling, no concurrency); the image is re-encoded to base64 for every
perception call; nothing is cached. The control flow is the faithful loop of the paper's released
code (see ``shared/docs/proreason.md``): dispatcher -> one expert -> referee per round, the
summarizer when the referee says solvable, a direct LVLM answer after ``max_rounds``.

It renders the project's own prompt templates (``configs/prompts``), so it sends the same prompts
(and tokens) as the service and the simulated engine recognises its roles the same way; only the
way of calling differs. It exists to measure against the service, not to be used.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from agents.parsing import ParseError, final_answer, parse_dispatch, parse_verdict
from agents.prompts import PromptSet


@dataclass
class ReferenceRun:
    answer: str
    stop_reason: str
    rounds: int
    calls: int
    latency_s: float
    call_s: list[float] = field(default_factory=list)


class ReferenceClient:
    """ProReason in a blocking Python loop over an OpenAI-compatible server."""

    def __init__(
        self,
        base_url: str,
        *,
        vision_model: str,
        text_model: str,
        max_rounds: int = 8,
        max_tokens: int = 1024,
        prompts: PromptSet | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.vision_model = vision_model
        self.text_model = text_model
        self.max_rounds = max_rounds
        self.max_tokens = max_tokens
        self.prompts = prompts or PromptSet.load()

    # ------------------------------------------------------------------ one call

    def _call(self, model: str, system: str | None, content: Any, run: ReferenceRun) -> str:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        start = time.perf_counter()
        with httpx.Client(timeout=600.0) as client:  # a new client, and connection, per call
            response = client.post(
                self.base_url + "/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": self.max_tokens},
            )
        response.raise_for_status()
        run.calls += 1
        run.call_s.append(time.perf_counter() - start)
        return str(response.json()["choices"][0]["message"]["content"])

    @staticmethod
    def _encode(image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def _text_role(self, name: str, run: ReferenceRun, **fields: Any) -> str:
        prompt = self.prompts[name]
        return self._call(self.text_model, prompt.system, prompt.render(**fields), run)

    def _image_role(self, name: str, image: Image.Image, run: ReferenceRun, **fields: Any) -> str:
        prompt = self.prompts[name]
        content = [
            {"type": "image_url", "image_url": {"url": self._encode(image)}},
            {"type": "text", "text": prompt.render(**fields)},
        ]
        return self._call(self.vision_model, prompt.system, content, run)

    # ------------------------------------------------------------------ the loop

    def run(self, question: str, image_data_url: str) -> ReferenceRun:
        start = time.perf_counter()
        raw = base64.b64decode(image_data_url.split(",", 1)[1])
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        run = ReferenceRun(answer="", stop_reason="", rounds=0, calls=0, latency_s=0.0)
        answer_format = self.prompts.text("answer_summary_open")
        memory: list[str] = []
        last_expert = "none"

        def notes() -> str:
            if not memory:
                return self.prompts.text("memory_empty")
            return "\n".join(f"{i}. {m}" for i, m in enumerate(memory, 1))

        for round_ in range(1, self.max_rounds + 1):
            run.rounds = round_
            text = self._text_role(
                "dispatcher",
                run,
                history="",
                question=question,
                memory=notes(),
                last_expert=last_expert,
            )
            try:
                decision = parse_dispatch(text)
            except ParseError:
                continue  # the round is spent
            if decision.expert == "vision":
                answer = self._image_role("vision", image, run, sub_question=decision.question)
            else:
                answer = final_answer(
                    self._text_role(
                        "insight", run, history="", memory=notes(), sub_question=decision.question
                    )
                )
            memory.append(answer)
            last_expert = decision.expert
            text = self._text_role("referee", run, history="", question=question, memory=notes())
            try:
                verdict = parse_verdict(text)
            except ParseError:
                continue
            if verdict.solvable:
                memory.append(verdict.reasoning)
                run.answer = self._text_role(
                    "summarizer",
                    run,
                    history="",
                    question=question,
                    memory=notes(),
                    answer_format=answer_format,
                )
                run.stop_reason = "solved"
                run.latency_s = time.perf_counter() - start
                return run
        run.answer = self._image_role(
            "fallback",
            image,
            run,
            history="",
            question=question,
            answer_format=self.prompts.text("answer_direct_open"),
        )
        run.stop_reason = "max_rounds_fallback"
        run.latency_s = time.perf_counter() - start
        return run
