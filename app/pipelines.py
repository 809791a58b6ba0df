"""The pipelines served as OpenAI "models": a name -> method, mode and parallel perception.

<prefix>             ProReason with the server's configured mode (agent.mode)
<prefix>-assisted    ProReason, text roles on the text LLM
<prefix>-pure        ProReason, one LVLM plays every role
<prefix>-parallel    ProReason with parallel perception (opt-in)
<prefix>-direct      baselines: direct, cot, ccot, caption
...                  (the bare baseline names ``direct``, ``cot`` ... are accepted as aliases)
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.config import AgentConfig
from agents.types import Method, Mode
from models.errors import NotFound

BASELINES: tuple[Method, ...] = ("direct", "cot", "ccot", "caption")


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(frozen=True)
class Pipeline:
    name: str
    method: Method
    mode: Mode
    parallel_perception: bool


def pipelines(prefix: str, agent: AgentConfig) -> dict[str, Pipeline]:
    """Every served pipeline by its canonical name, in listing order."""
    out = [
        Pipeline(prefix, "proreason", agent.mode, agent.parallel_perception),
        Pipeline(f"{prefix}-assisted", "proreason", "assisted", agent.parallel_perception),
        Pipeline(f"{prefix}-pure", "proreason", "pure", agent.parallel_perception),
        Pipeline(f"{prefix}-parallel", "proreason", agent.mode, True),
    ]
    out += [Pipeline(f"{prefix}-{m}", m, agent.mode, False) for m in BASELINES]
    return {p.name: p for p in out}


def resolve_pipeline(name: str, prefix: str, agent: AgentConfig) -> Pipeline:
    known = pipelines(prefix, agent)
    if name in known:
        return known[name]
    if name in BASELINES:
        return known[f"{prefix}-{name}"]
    raise ModelNotFound(
        f"The model '{name}' does not exist; available: {', '.join(known)}", param="model"
    )
