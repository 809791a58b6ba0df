"""Typed inputs and outputs of a reasoning run (no HTTP, no wire formats)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from models.base import ModelBackend
from models.types import FinishReason, ImageInput, Message, Usage, VideoInput

#: the limits of a request, written once (wire schemas, settings and the Reasoner use these)
MAX_ROUNDS = 32
MAX_OPTIONS = 26

Method = Literal["proreason", "direct", "cot", "ccot", "caption"]
Mode = Literal["pure", "assisted"]
AnswerFormat = Literal["open", "multiple_choice"]
StopReason = Literal[
    "solved",  # the referee judged the memory sufficient; the summarizer answered
    "max_rounds_fallback",  # no verdict within max_rounds: the LVLM answered directly
    "no_image_direct",  # no image: the text model answered directly
    "baseline",  # a one-shot baseline method answered (direct, cot, ccot, caption)
]


@dataclass(frozen=True)
class Question:
    """``video``: the question is about a video; ``images`` are then its sampled frames, in
    order (``Question.about_video``), and nothing else."""

    text: str
    images: tuple[ImageInput, ...] = ()
    #: earlier chat turns (text only is enough; images in them are kept too), oldest first
    history: tuple[Message, ...] = ()
    answer_format: AnswerFormat = "open"
    #: the choices for multiple_choice questions (shown to the summarizer only)
    options: tuple[str, ...] = ()
    video: VideoInput | None = None

    def __post_init__(self) -> None:
        if self.video is not None and self.images != self.video.frames:
            raise ValueError("a video question's images must be the video's frames")

    @classmethod
    def about_video(cls, text: str, video: VideoInput, **fields: Any) -> Question:
        """A question about ``video``: the vision expert sees its frames, in order."""
        return cls(text=text, images=video.frames, video=video, **fields)


@dataclass(frozen=True)
class RunOptions:
    """How to answer. ``None`` means "the AgentConfig's default": ``Reasoner.prepare`` is the one
    place that fills the gaps, so a caller sets only what it wants to change."""

    method: Method | None = None
    mode: Mode | None = None
    max_rounds: int | None = None
    #: opt-in: the dispatcher may ask several visual sub-questions in one round (run concurrently)
    parallel_perception: bool | None = None
    max_tokens: int | None = None  # per model call
    temperature: float | None = None  # None everywhere: the model's default (as the reference)
    #: the prompt set: "default" (ours, JSON decisions) or "reference" (the authors' protocol)
    prompts: str | None = None
    top_p: float | None = None  # None: the model's default
    seed: int | None = None
    #: offer the dispatcher the OCR expert (needs the ``ocr`` extra); None: ``agent.ocr``
    ocr: bool | None = None


@dataclass(frozen=True)
class ResolvedOptions:
    """RunOptions with every default filled in (made by ``Reasoner.prepare`` only)."""

    method: Method
    mode: Mode
    max_rounds: int
    parallel_perception: bool
    max_tokens: int
    temperature: float | None
    prompts: str = "default"
    top_p: float | None = None
    seed: int | None = None
    ocr: bool = False


@dataclass(frozen=True)
class Job:
    """A validated question with its resolved options: what ``Reasoner.stream`` runs."""

    question: Question
    options: ResolvedOptions


@dataclass(frozen=True)
class ModelSet:
    """The models a run may use. ``text`` is None in pure mode deployments."""

    vision: ModelBackend
    text: ModelBackend | None = None

    def for_text_roles(self, mode: Mode) -> ModelBackend:
        if mode == "assisted" and self.text is not None:
            return self.text
        return self.vision


@dataclass
class Step:
    """One model call of a run, recorded as it happens."""

    index: int
    round: int  # 0 for calls outside the loop (baselines, direct answers)
    #: dispatcher | vision | ocr | insight | referee | summarizer | fallback | direct | ...
    role: str
    model: str
    backend: str
    sub_question: str | None = None
    output: str = ""  # the model's raw text
    memory_entry: str | None = None  # what this step added to memory, if anything
    decision: dict[str, Any] | None = None  # parsed dispatcher / referee decision
    parse_error: str | None = None  # the model's output could not be used (round spent)
    error: str | None = None  # the model call failed (round spent)
    #: why the call ended ("stop", "length" = cut at max_tokens, ...); None when it failed
    finish_reason: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    started_at: float = 0.0  # seconds since the run started
    #: True when this call ran concurrently with other calls of its round (parallel perception)
    parallel: bool = False


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of the final answer while its model call runs (``Reasoner.stream(job,
    answer_deltas=True)``). The first one of a call has ``text == ""`` and is sent as the call
    starts; the pieces of a run add up to ``RunResult.answer`` (``agents.answer_stream`` says
    when they cannot, and the run notes it). ``step`` is the call's Step, complete only when it
    is yielded itself, after its deltas."""

    step: Step
    text: str


@dataclass
class RunResult:
    answer: str
    method: Method
    mode: Mode
    stop_reason: StopReason
    rounds: int
    steps: list[Step]
    usage_by_role: dict[str, Usage]
    usage: Usage
    latency_s: float
    parse_failures: int = 0
    #: memory truncation events, model call errors ... (human-readable)
    notes: list[str] = field(default_factory=list)
    #: False when a multiple-choice answer could not be matched to an option (``answer`` is then
    #: the model's raw answer, never a guessed option)
    answer_extracted: bool = True


#: what ``Reasoner.stream`` yields: Steps (and answer pieces, when asked for), then one RunResult
RunEvent = Step | AnswerDelta | RunResult
