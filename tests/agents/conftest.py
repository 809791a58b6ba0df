"""A scripted fake ModelBackend for agent tests (a test double: it lives here, never in the code).

The fake recognises the role of each request from its system prompt (the bundled templates in
configs/prompts), answers from a per-role script, records every request with timing, can raise a
ModelError on chosen calls, and can claim JSON-schema support or not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from PIL import Image

from agents import AgentConfig, ModelSet, Reasoner
from agents.prompts import PromptSet
from models.base import ModelBackend
from models.errors import ModelError
from models.types import GenerationRequest, GenerationResult, ImageInput, Usage
from tests.fakes.roles import ANSWER, role_of

DEFAULTS: dict[str, str] = {
    "dispatcher": '{"expert": "vision", "question": "Which shapes are visible?"}',
    "vision": "Step 1: there is a red square.\nStep 2: there is a blue circle.",
    "insight": "The notes list a square and a circle.\nFinal answer: two shapes",
    "referee": '{"solvable": true, "reasoning": "The notes name every shape."}',
    "summarizer": "Answer: two",
    ANSWER: "Answer: two",
    "scene_graph": '{"objects": [{"name": "square", "attributes": ["red"]}], "relationships": []}',
    "caption": "A red square and a blue circle on a white background.",
}

Script = str | Sequence[str] | Callable[[GenerationRequest, int], str]


@dataclass
class Call:
    role: str
    request: GenerationRequest
    started: float
    finished: float = 0.0

    @property
    def text(self) -> str:
        """All the text the model was shown (system + user)."""
        return "\n".join(m.text_content for m in self.request.messages)

    @property
    def user_text(self) -> str:
        return "\n".join(m.text_content for m in self.request.messages if m.role == "user")

    @property
    def n_images(self) -> int:
        return len(self.request.images)


@dataclass(eq=False)
class FakeModel(ModelBackend):
    """Answers per role from ``script`` (a string, a list consumed in order with its last item
    repeating, or a function ``(request, n) -> text`` with n the 1-based call count of that role).
    ``fail`` maps a role to the call numbers that raise ModelError."""

    name: str = "fake-lvlm"
    script: dict[str, Script] = field(default_factory=dict)
    fail: dict[str, set[int]] = field(default_factory=dict)
    #: role -> call numbers that end at max_tokens (finish_reason "length")
    cut: dict[str, set[int]] = field(default_factory=dict)
    delay_s: float = 0.0
    json_schema: bool = False
    context: int | None = None
    images_ok: bool = True
    calls: list[Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    backend: str = "fake"

    def __post_init__(self) -> None:
        super().__init__(self.name, context_length=self.context)
        self.supports_json_schema = self.json_schema
        self.supports_images = self.images_ok

    def _answer(self, role: str, request: GenerationRequest, n: int) -> str:
        script = self.script.get(role, DEFAULTS[role])
        if isinstance(script, str):
            return script
        if callable(script):
            return script(request, n)
        return script[min(n, len(script)) - 1]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        role = role_of(request)
        n = self.counts[role] = self.counts.get(role, 0) + 1
        call = Call(role, request, time.perf_counter())
        self.calls.append(call)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if n in self.fail.get(role, set()):
                raise ModelError(f"{self.name}: scripted failure of {role} call {n}")
            text = self._answer(role, request, n)
        finally:
            call.finished = time.perf_counter()
        prompt = sum(self.count_tokens(m.text_content) for m in request.messages)
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=self.count_tokens(text),
            image_tokens=10 * len(request.images),
        )
        finish = "length" if n in self.cut.get(role, set()) else "stop"
        return GenerationResult(text=text, usage=usage, model=self.name, finish_reason=finish)

    def roles(self) -> list[str]:
        return [c.role for c in self.calls]

    def of(self, role: str) -> list[Call]:
        return [c for c in self.calls if c.role == role]


@pytest.fixture(scope="session")
def prompts() -> PromptSet:
    return PromptSet.load()


@pytest.fixture
def image(shapes_image: Image.Image) -> ImageInput:
    return ImageInput(shapes_image)


@pytest.fixture
def image2(shapes_image: Image.Image) -> ImageInput:
    return ImageInput(shapes_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


@pytest.fixture(scope="session")
def prompt_sets() -> dict[str, PromptSet]:
    return PromptSet.load_sets()


@pytest.fixture
def make_reasoner(prompt_sets: dict[str, PromptSet]) -> Callable[..., Reasoner]:
    def make(vision: FakeModel, text: FakeModel | None = None, **config: object) -> Reasoner:
        return Reasoner(
            ModelSet(vision=vision, text=text), AgentConfig(**config), prompts=prompt_sets
        )

    return make
