"""OpenAI's published schemas of a chat completion, a stream chunk and an error, as validators.

The schemas are a trimmed, unchanged copy of openai/openai-openapi's ``openapi.json``
(``tests/data/openai/chat_schemas.json``: source commit, MIT license and the script that made it
beside it). That document is OpenAPI 3.1 (JSON Schema 2020-12), but some of its members still
use OpenAPI 3.0's ``nullable: true`` (the stream chunk's ``finish_reason`` and ``logprobs``),
which JSON Schema ignores: ``nullable_to_null`` rewrites them into ``"null"`` alternatives, so a
``null`` the spec allows passes and everything else is checked as published.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SPEC = Path(__file__).parents[1] / "data" / "openai" / "chat_schemas.json"

COMPLETION = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"
ERROR = "ErrorResponse"
MODEL = "Model"
MODELS = "ListModelsResponse"


def nullable_to_null(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` -> JSON Schema's ``null`` (type and enum), recursively."""
    if isinstance(node, list):
        return [nullable_to_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable_to_null(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def _document() -> dict[str, Any]:
    return nullable_to_null(json.loads(SPEC.read_text()))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A validator for one of the document's component schemas (``$ref``s resolved in it)."""
    doc = copy.deepcopy(_document())
    doc.pop("x-source", None)
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", **doc}
    root["$ref"] = f"#/components/schemas/{name}"
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


def errors(name: str, body: Any) -> list[str]:
    """Every violation of schema ``name`` by ``body``, as ``path: message`` lines."""
    found: list[ValidationError] = sorted(
        validator(name).iter_errors(body), key=lambda e: list(e.absolute_path)
    )
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def assert_valid(name: str, body: Any) -> None:
    problems = errors(name, body)
    assert not problems, f"{name}:\n" + "\n".join(problems) + f"\nbody: {json.dumps(body)[:2000]}"
