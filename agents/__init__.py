"""The reasoning core: ProReason (dispatcher, vision / insight experts, referee, summarizer) and
one-shot baselines behind one interface. Knows nothing about HTTP; talks to models only through
``models.ModelBackend``.

    reasoner = Reasoner(ModelSet(vision=lvlm, text=llm), AgentConfig())
    result = await reasoner.run(Question("How many red squares?", images=(img,)))
    job = reasoner.prepare(question, RunOptions(mode="pure"))   # validated (InvalidRequest)
    async for event in reasoner.stream(job):
        ...  # a Step per model call, then one RunResult
    reasoner.stream(job, answer_deltas=True)   # the answer's pieces too (AnswerDelta)
"""

from agents.config import AgentConfig
from agents.prompts import PromptError, PromptSet
from agents.reasoner import Reasoner
from agents.types import AnswerDelta, Job, ModelSet, Question, RunOptions, RunResult, Step

__all__ = [
    "AgentConfig",
    "AnswerDelta",
    "Job",
    "ModelSet",
    "PromptError",
    "PromptSet",
    "Question",
    "Reasoner",
    "RunOptions",
    "RunResult",
    "Step",
]
