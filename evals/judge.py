"""An optional LLM judge (off by default): the configured text model says whether a prediction
agrees with the reference. Its verdict is its own column (``judge``); the extractor's verdict
stays the score."""

from __future__ import annotations

import re

from models.base import ModelBackend
from models.types import GenerationRequest, Message, SamplingParams

_PROMPT = (
    "You grade an answer against a reference. Question: {question}\n"
    "Reference answer: {reference}\nGiven answer: {prediction}\n"
    "Does the given answer agree with the reference? Reply with one word: "
    "correct, incorrect or unclear."
)
_WORD = re.compile(r"\b(incorrect|correct|unclear)\b", re.I)


class ModelJudge:
    def __init__(self, model: ModelBackend, *, max_tokens: int = 8) -> None:
        self.model, self.max_tokens = model, max_tokens

    async def __call__(self, question: str, reference: str, prediction: str) -> str:
        prompt = _PROMPT.format(question=question, reference=reference, prediction=prediction)
        result = await self.model.generate(
            GenerationRequest(
                messages=(Message.text("user", prompt),),
                sampling=SamplingParams(max_tokens=self.max_tokens, temperature=0.0),
            )
        )
        found = _WORD.search(result.text)
        word = found.group(1).lower() if found else "unclear"
        return {"correct": "correct", "incorrect": "wrong"}.get(word, "unclear")
