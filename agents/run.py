"""The state of one run: prompt building within the context budget, model calls recorded as Steps.

Every model call goes through :meth:`RunContext.call` (or :meth:`RunContext.execute`), and the
call that produces the run's answer through :meth:`RunContext.final_call` (streamed, when the run
streams answer pieces, with :class:`~agents.answer_stream.AnswerStream`): it measures the call,
records output and usage on a :class:`~agents.types.Step`, and turns a ``ModelError`` into
``Step.error`` (the caller decides whether that spends a round or fails the run, see
:meth:`RunContext.raise_if_failed`; :meth:`RunContext.raise_if_fatal` fails it for an unavailable
model or a prompt too large for it, which no further round would get past).
``asyncio.CancelledError`` and bugs are never caught.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, Literal

from agents.answer_stream import AnswerStream, StreamMode
from agents.answers import final_answer, format_options, option_letter, read_choice
from agents.config import AgentConfig
from agents.memory import Fitted, Memory, clip_text, fit_lines
from agents.prompts import PromptSet
from agents.types import AnswerDelta, Job, ModelSet, Step, StopReason
from models.base import ModelBackend
from models.errors import ContextLengthExceeded, ModelError, ModelUnavailable
from models.ocr import OcrEngine, OcrResult
from models.types import (
    ContentPart,
    FinishReason,
    GenerationRequest,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    TextPart,
    Usage,
)

logger = logging.getLogger(__name__)

AnswerStyle = Literal["direct", "summary", "step"]

#: tokens kept free for the chat template's own markup around the messages
TEMPLATE_MARGIN = 32
#: the share of the prompt budget the chat history may take
HISTORY_SHARE = 4


class RunContext:
    """One question being answered: models, memory, the steps so far, notes and counters."""

    def __init__(
        self,
        job: Job,
        models: ModelSet,
        prompts: PromptSet,
        config: AgentConfig,
        *,
        ocr: OcrEngine | None = None,
        answer_deltas: bool = False,
    ) -> None:
        self.question = job.question
        #: stream the final answer's model call and yield AnswerDeltas (``RunContext.answer``)
        self.answer_deltas = answer_deltas
        self.options = job.options
        self.prompts = prompts
        self.config = config
        self.vision = models.vision
        self.text = models.for_text_roles(self.options.mode)
        self.ocr = ocr
        self.memory = Memory()
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.parse_failures = 0
        self.rounds = 0
        self.answer = ""
        self.answer_extracted = True
        self.stop_reason: StopReason | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self.sampling = SamplingParams(
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            seed=self.options.seed,
        )
        self._errors: dict[int, ModelError] = {}
        self._history: dict[int, str] = {}
        self._video_block: str | None = None
        self._noted: set[str] = set()
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------------------- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def note(self, message: str, *, key: str | None = None) -> None:
        """Add ``message`` to the run's notes once per ``key`` (default: the message); logged."""
        key = key or message
        if key in self._noted:
            logger.debug("run %s: %s", self.run_id, message)
            return
        logger.info("run %s: %s", self.run_id, message)
        self._noted.add(key)
        self.notes.append(message)

    def parse_failed(self, step: Step, reason: str) -> None:
        """The model's output was unusable: recorded on the step and counted (round spent)."""
        step.parse_error = reason
        self.parse_failures += 1
        logger.info(
            "run %s: %s output unusable in round %d: %s", self.run_id, step.role, step.round, reason
        )

    def raise_if_failed(self, step: Step) -> None:
        """Re-raise the ModelError of a call whose failure must fail the run."""
        error = self._errors.get(step.index)
        if error is not None:
            raise error

    def raise_if_fatal(self, step: Step) -> None:
        """Re-raise a failure no further round can get past: the model is unavailable (down
        after the backend's retries, or its circuit breaker open) or the prompt is too large
        for it (deterministic: every round would be refused the same way)."""
        error = self._errors.get(step.index)
        if isinstance(error, ModelUnavailable | ContextLengthExceeded):
            raise error

    # --------------------------------------------------------------------------- prompt building

    def context_length(self, backend: ModelBackend) -> int:
        return backend.context_length or self.config.default_context_length

    def _prompt_budget(self, backend: ModelBackend) -> int:
        return self.context_length(backend) - self.sampling.max_tokens - TEMPLATE_MARGIN

    def history_block(self, backend: ModelBackend) -> str:
        """The "conversation so far" block (bounded to a share of the context), or ''."""
        if not self.question.history:
            return ""
        key = id(backend)
        if key not in self._history:
            lines = []
            for message in self.question.history:
                text = " ".join(message.text_content.split())
                if message.images:
                    text = f"{self._image_labels(message)} {text}".strip()
                if text:
                    lines.append(f"{message.role.capitalize()}: {text}")
            budget = max(1, self._prompt_budget(backend) // HISTORY_SHARE)
            fitted = fit_lines(
                lines,
                budget,
                backend.count_tokens,
                keep_first=False,
                gap=lambda k: self.prompts.text("omitted_turns", count=k),
            )
            if fitted.truncated:
                self.note(
                    f"chat history truncated to fit {budget} tokens "
                    f"({fitted.omitted} earlier turn(s) omitted)"
                )
            self._history[key] = (
                self.prompts.text("history", turns=fitted.text) if fitted.text else ""
            )
        return self._history[key]

    def video_block(self) -> str:
        """What the roles that cannot see are told about a video question ('' otherwise): its
        length and the frames' numbers and times (``video_context``)."""
        video = self.question.video
        if video is None:
            return ""
        if self._video_block is None:
            moments = ", ".join(
                self.prompts.text("video_moment", n=n, time=_seconds(t))
                for n, t in enumerate(video.timestamps, start=1)
            )
            self._video_block = self.prompts.text(
                "video_context",
                frames=moments,
                count=len(video.frames),
                duration=_seconds(video.duration_s),
            )
        return self._video_block

    def frame_label(self, n: int) -> str:
        """``Frame 3 at 1.50 s:`` for the n-th (1-based) frame of a video question."""
        video = self.question.video
        if video is None:
            raise ValueError("not a video question")
        return self.prompts.text("video_frame", n=n, time=_seconds(video.timestamps[n - 1]))

    def visual_parts(self, images: Sequence[ImageInput]) -> list[ContentPart]:
        """The images of a user turn, in order. A video question's frames are labelled: the
        ``video_frames`` header, then each frame after its ``video_frame`` label."""
        video = self.question.video
        if video is None or tuple(images) != video.frames:
            return [ImagePart(img) for img in images]
        parts: list[ContentPart] = [
            TextPart(
                self.prompts.text(
                    "video_frames", count=len(video.frames), duration=_seconds(video.duration_s)
                ).strip()
            )
        ]
        for n, frame in enumerate(video.frames, start=1):
            parts.append(TextPart(self.frame_label(n).strip()))
            parts.append(ImagePart(frame))
        return parts

    def _image_labels(self, message: Message) -> str:
        """``[image 2]`` for each image of an earlier turn: its position among the images the
        vision expert sees (the latest turn's first, then earlier turns, newest first)."""
        numbers = {}
        for i, image in enumerate(self.question.images, start=1):
            numbers.setdefault(image.sha256, i)
        labels = [
            f"[image {numbers[image.sha256]}]" if image.sha256 in numbers else "[image not shown]"
            for image in message.images
        ]
        return " ".join(labels)

    def answer_format(self, style: AnswerStyle) -> str:
        """The answer instructions for the question's format (with the options, if any)."""
        if self.question.answer_format == "multiple_choice":
            options = self.prompts.text("options", options=format_options(self.question.options))
            return options + "\n" + self.prompts.text(f"answer_{style}_choice").strip()
        return self.prompts.text(f"answer_{style}_open").strip()

    def messages(
        self,
        prompt_name: str,
        backend: ModelBackend,
        *,
        images: Sequence[ImageInput] = (),
        round: int = 0,
        **fields: Any,
    ) -> tuple[Message, ...]:
        """System + user messages for ``prompt_name``, images first in the user turn.

        Only the blocks the template uses are built: ``{history}`` (bounded chat history) and
        ``{memory}`` (fitted to ``backend``'s context after the rest of the prompt).
        """
        prompt = self.prompts[prompt_name]
        if "history" in prompt.fields:  # the question's context: the video, then earlier turns
            fields["history"] = self.video_block() + self.history_block(backend)
        if "memory" in prompt.fields:
            fields["memory"] = self._memory_text(prompt_name, backend, round, fields)
        messages: list[Message] = []
        if prompt.system:
            messages.append(Message.text("system", prompt.system))
        parts = [*self.visual_parts(images), TextPart(prompt.render(**fields).strip())]
        messages.append(Message(role="user", content=tuple(parts)))
        return tuple(messages)

    def _memory_text(
        self, prompt_name: str, backend: ModelBackend, round: int, fields: dict[str, Any]
    ) -> str:
        prompt = self.prompts[prompt_name]
        fixed = backend.count_tokens(prompt.render(**{**fields, "memory": ""}))
        if prompt.system:
            fixed += backend.count_tokens(prompt.system)
        budget = self._prompt_budget(backend) - fixed
        fitted: Fitted = self.memory.render(self.prompts, budget, backend.count_tokens)
        if fitted.truncated:
            detail = f"{fitted.omitted} earlier note(s) omitted" if fitted.omitted else ""
            if fitted.clipped:
                detail = ", ".join(d for d in (detail, "the newest note clipped") if d)
            context = self.context_length(backend)
            self.note(
                f"{prompt_name}: memory truncated to fit the {context}-token context "
                f"(first in round {round}: {detail})",
                key=f"memory:{prompt_name}",
            )
        return fitted.text

    def clip(self, text: str, backend: ModelBackend, share: int = 2) -> str:
        """Clip a long intermediate text (a caption, a scene graph) to a share of the budget."""
        budget = max(1, self._prompt_budget(backend) // share)
        clipped = clip_text(text, budget, backend.count_tokens)
        if clipped != text:
            self.note(f"intermediate text clipped to {budget} tokens")
        return clipped

    def json_schema(self, backend: ModelBackend, schema: dict[str, Any]) -> dict[str, Any] | None:
        """``schema`` when it may be sent: the backend supports it, the profile wants structured
        decisions and the prompt set asks for JSON (the reference set's protocol is text)."""
        if self.config.structured_decisions and self.prompts.structured and (
            backend.supports_json_schema
        ):
            return schema
        return None

    # ------------------------------------------------------------------------------- model calls

    def new_step(
        self,
        role: str,
        backend: ModelBackend,
        *,
        round: int = 0,
        sub_question: str | None = None,
        parallel: bool = False,
    ) -> Step:
        step = Step(
            index=len(self.steps),
            round=round,
            role=role,
            model=backend.model,
            backend=backend.backend,
            sub_question=sub_question,
            parallel=parallel,
        )
        self.steps.append(step)
        return step

    def _adapter(self, role: str, backend: ModelBackend) -> str | None:
        """The role's adapter when its backend serves it (pure mode may put a text role's
        adapter on the LVLM, which lacks it: then the base model answers, noted once)."""
        name = self.config.adapters.get(role)
        if name is None:
            return None
        if name in backend.adapters:
            return name
        self.note(f"{role}: adapter {name!r} is not served by {backend.model!r}; base model")
        return None

    def _request(
        self,
        step: Step,
        backend: ModelBackend,
        messages: tuple[Message, ...],
        json_schema: dict[str, Any] | None = None,
    ) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            sampling=self.sampling,
            json_schema=json_schema,
            request_id=f"{self.run_id}-{step.index}",
            session_id=self.run_id,
            adapter=self._adapter(step.role, backend),
        )

    def _failed(self, step: Step, exc: ModelError) -> None:
        step.error = f"{type(exc).__name__}: {exc.message}"
        self._errors[step.index] = exc
        self.note(f"round {step.round} {step.role}: model call failed ({step.error})")

    def _answered(
        self, step: Step, text: str, finish_reason: FinishReason, usage: Usage, model: str
    ) -> None:
        step.output = text
        step.finish_reason = finish_reason
        step.usage = usage
        step.model = model or step.model
        if finish_reason == "length":
            self.note(f"round {step.round} {step.role}: output cut at max_tokens")

    async def execute(
        self,
        step: Step,
        backend: ModelBackend,
        messages: tuple[Message, ...],
        json_schema: dict[str, Any] | None = None,
    ) -> Step:
        """Run one model call for ``step``. A ModelError is recorded on the step, not raised."""
        request = self._request(step, backend, messages, json_schema)
        start = time.perf_counter()
        step.started_at = start - self._t0
        try:
            result = await backend.generate(request)
        except ModelError as exc:
            self._failed(step, exc)
        else:
            self._answered(step, result.text, result.finish_reason, result.usage, result.model)
        finally:
            step.latency_s = time.perf_counter() - start
        return step

    async def _execute_streamed(
        self,
        step: Step,
        backend: ModelBackend,
        messages: tuple[Message, ...],
        answer: AnswerStream,
    ) -> AsyncIterator[str]:
        """As :meth:`execute`, through ``backend.stream``: yields the pieces ``answer`` lets
        through as they are generated; the step gets the whole reply, usage and latency."""
        request = self._request(step, backend, messages)
        start = time.perf_counter()
        step.started_at = start - self._t0
        text, finish, usage = "", None, None
        try:
            async with aclosing(backend.stream(request)) as deltas:
                async for delta in deltas:
                    text += delta.text
                    finish = delta.finish_reason or finish
                    usage = delta.usage or usage
                    piece = answer.feed(delta.text)
                    if piece:
                        yield piece
        except ModelError as exc:
            self._failed(step, exc)
        else:
            self._answered(step, text, finish or "stop", usage or Usage(), "")
        finally:
            step.latency_s = time.perf_counter() - start

    def _stream_mode(self, style: AnswerStyle) -> StreamMode:
        """How the answer of a reply in ``style`` may be streamed (see agents.answer_stream)."""
        if self.question.answer_format == "multiple_choice":
            return "hold"  # the answer is the option letter, read from the whole reply
        return "line" if style == "step" else "free"

    async def final_call(
        self,
        role: str,
        backend: ModelBackend,
        messages: tuple[Message, ...],
        stop_reason: StopReason,
        *,
        style: AnswerStyle,
        round: int = 0,
    ) -> AsyncIterator[Step | AnswerDelta]:
        """The call that answers the question: the run's answer and stop reason are taken from
        it (:meth:`finish`), its Step is yielded, and a failure fails the run. With
        ``answer_deltas``, the reply is streamed and AnswerDeltas come first: an empty one as the
        call starts, the pieces as they are settled, then the rest of the answer."""
        step = self.new_step(role, backend, round=round)
        stream = AnswerStream(self._stream_mode(style)) if self.answer_deltas else None
        if stream is None:
            await self.execute(step, backend, messages)
        else:
            yield AnswerDelta(step, "")
            async for piece in self._execute_streamed(step, backend, messages, stream):
                yield AnswerDelta(step, piece)
        if not step.error:
            self.finish(step, stop_reason)
            if stream is not None:
                rest = stream.close(self.answer)
                if rest is None:
                    self.note(
                        f"{role}: an answer line after the streamed one changed the answer; "
                        f"the stream showed {stream.emitted!r}"
                    )
                elif rest:
                    yield AnswerDelta(step, rest)
        yield step
        self.raise_if_failed(step)

    async def call(
        self,
        role: str,
        backend: ModelBackend,
        messages: tuple[Message, ...],
        *,
        round: int = 0,
        sub_question: str | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> Step:
        step = self.new_step(role, backend, round=round, sub_question=sub_question)
        return await self.execute(step, backend, messages, json_schema)

    async def read_text(self, *, round: int, sub_question: str | None = None) -> Step:
        """The OCR expert: the text of every image of the question, as one Step (role "ocr",
        its latency, no tokens). A ModelError (timeout, engine failure) is recorded on the step."""
        if self.ocr is None:  # Reasoner.resolve refuses ocr without an engine
            raise RuntimeError("the OCR expert was asked for but there is no OCR engine")
        step = Step(
            index=len(self.steps),
            round=round,
            role="ocr",
            model=self.ocr.name,
            backend="ocr",
            sub_question=sub_question,
        )
        self.steps.append(step)
        start = time.perf_counter()
        step.started_at = start - self._t0
        try:
            results = [await self.ocr.read(image) for image in self.question.images]
        except ModelError as exc:
            step.error = f"{type(exc).__name__}: {exc.message}"
            self._errors[step.index] = exc
            self.note(f"round {step.round} ocr: failed ({step.error})")
        else:
            labels = None
            if self.question.video is not None:  # "Frame 3 at 1.50 s" per frame
                count = len(results)
                labels = [self.frame_label(n).strip().rstrip(":") for n in range(1, count + 1)]
            step.output = format_ocr(results, labels)
            step.finish_reason = "stop"
            if results and all(r.cached for r in results):
                self.note(f"round {step.round} ocr: text from the cache")
        finally:
            step.latency_s = time.perf_counter() - start
        return step

    # ------------------------------------------------------------------------------ final answer

    def finish(self, step: Step, stop_reason: StopReason) -> None:
        """Take the run's answer from ``step`` (a final-answer call that succeeded)."""
        self.stop_reason = stop_reason
        if self.question.answer_format == "multiple_choice":
            choice = read_choice(step.output, self.question.options)
            if choice.index is not None:
                self.answer = option_letter(choice.index)
                return
            self.answer = final_answer(step.output)
            self.answer_extracted = False
            self.note(
                f"multiple-choice answer not matched to any option ({choice.how}); "
                "kept the raw answer"
            )
            return
        self.answer = final_answer(step.output)
        if not self.answer:
            self.note(f"{step.role} returned an empty answer")


def _seconds(t: float) -> str:
    """A time as the roles read it: seconds with two decimals (``1.50``)."""
    return f"{t:.2f}"


def format_ocr(results: Sequence[OcrResult], labels: Sequence[str] | None = None) -> str:
    """The OCR expert's answer: per image (``labels[i]``, default ``Image i``; a video's frames
    are named by number and time), one line per row of text in reading order, each cell
    ``[left,top,right,bottom] text``, cells of a row separated by `` | ``."""
    parts = []
    for i, result in enumerate(results, start=1):
        w, h = result.size
        name = labels[i - 1] if labels else f"Image {i}"
        head = f"{name} ({w}x{h} px):"
        rows = [
            " | ".join(f"[{','.join(map(str, line.box))}] {line.text}" for line in row)
            for row in result.rows
        ]
        parts.append("\n".join([head, *rows]) if rows else f"{head} no text found")
    return "\n".join(parts)
