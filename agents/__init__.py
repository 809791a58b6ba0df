"""The reasoning core: ProReason (dispatcher, vision / insight experts, referee, summarizer) and
one-shot baselines behind one interface. Knows nothing about HTTP; talks to models only through
``models.ModelBackend``.

    reasoner = Reasoner(ModelSet(vision=lvlm, text=llm), AgentConfig())
    result = await reasoner.run(Question("How many red squares?", images=(img,)))
    async for event in reasoner.stream(question, RunOptions(mode="pure")):
        ...  # a Step per model call, then one RunResult
"""

from agents.config import AgentConfig
from agents.prompts import PromptError, PromptSet
from agents.reasoner import Reasoner
from agents.types import ModelSet, Question, RunOptions, RunResult, Step

__all__ = [
    "AgentConfig",
    "ModelSet",
    "PromptError",
    "PromptSet",
    "Question",
    "Reasoner",
    "RunOptions",
    "RunResult",
    "Step",
]
