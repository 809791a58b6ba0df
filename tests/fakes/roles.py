"""Which ProReason role a prompt is for, recognised by the bundled system prompts.

Shared by every test double that answers per role (scripted ModelBackends, loopback upstreams).
If configs/prompts/*.yaml change their opening lines, update SYSTEM_ROLES. The ``reference``
prompt set (configs/prompts/reference/) gives most roles no system prompt, as the authors' code:
those are recognised by the opening line of the user message (USER_ROLES).
"""

from __future__ import annotations

from typing import Any

from models.types import GenerationRequest
from tests.fakes.openai_server import Failure

#: system-prompt prefixes of the bundled templates -> role
SYSTEM_ROLES: tuple[tuple[str, str], ...] = (
    ("You are the planner", "dispatcher"),
    ("You are a careful observer", "vision"),
    ("You are a reasoning specialist", "insight"),
    ("You are a strict judge", "referee"),
    ("You write the final answer", "summarizer"),
    ("You describe images as structured scene graphs", "scene_graph"),
    ("You describe images.", "caption"),
    ("You are a professor at a technical university", "insight"),  # the reference set
)
#: user-message prefixes of the reference set's roles that have no system prompt -> role
USER_ROLES: tuple[tuple[str, str], ...] = (
    ("Your task is to settle this question:", "dispatcher"),
    ("Work through this step by step and answer:", "vision"),
    ("The question I have to answer is:", "referee"),
    ("The question to answer is:", "summarizer"),
)
#: everything else answers the original question in one go (fallback, no-image, baselines)
ANSWER = "answer"

#: a run that is solved in one round: dispatcher -> vision -> referee (solvable) -> summarizer
DEFAULT_SCRIPT: dict[str, str] = {
    "dispatcher": '{"expert": "vision", "question": "Which shapes are visible?"}',
    "vision": "Step 1: a red square.\nStep 2: a blue circle right of it.",
    "insight": "The square is left of the circle.\nFinal answer: left",
    "referee": '{"solvable": true, "reasoning": "The notes place both shapes."}',
    "summarizer": "Answer: the red square is left of the blue circle",
    ANSWER: "Answer: a red square and a blue circle",
    "scene_graph": '{"objects": [{"name": "square", "attributes": ["red"]}], "relationships": []}',
    "caption": "A red square and a blue circle on white.",
}


def role_of_system(system: str, user: str = "") -> str:
    for prefix, role in SYSTEM_ROLES:
        if system.startswith(prefix) and (role != "caption" or system == prefix):
            return role
    if not system:
        for prefix, role in USER_ROLES:
            if user.startswith(prefix):
                return role
    return ANSWER


def role_of(request: GenerationRequest) -> str:
    """The role of an internal request (scripted ModelBackend doubles)."""
    system = next((m.text_content for m in request.messages if m.role == "system"), "")
    user = next((m.text_content for m in request.messages if m.role == "user"), "")
    return role_of_system(system, user)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def role_in(body: dict[str, Any]) -> str:
    """The role of a chat-completions body (loopback upstream doubles)."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
    return role_of_system(system if isinstance(system, str) else "", _text(user))


class RoleResponder:
    """A FakeOpenAIServer responder answering per role from a script; ``fail[role]`` returns a
    Failure instead. ``roles`` records the roles asked, in order."""

    def __init__(self, script: dict[str, str] | None = None) -> None:
        self.script = {**DEFAULT_SCRIPT, **(script or {})}
        self.fail: dict[str, Failure] = {}
        self.roles: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str | Failure:
        role = role_in(body)
        self.roles.append(role)
        return self.fail.get(role, self.script[role])
