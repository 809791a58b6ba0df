"""Re-make ``chat_schemas.json`` from a checkout of github.com/openai/openai-openapi.

    python tests/data/openai/extract.py /path/to/openai-openapi/openapi.json COMMIT

Keeps the chat-completion response, stream-chunk, error and model(s) schemas and everything they
reference (``#/components/schemas/...``), unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
)


def _refs(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out.add(value.rsplit("/", 1)[-1])
            else:
                _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def closure(schemas: dict[str, object], roots: tuple[str, ...] = ROOTS) -> dict[str, object]:
    seen: dict[str, object] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = schemas[name]
        found: set[str] = set()
        _refs(schemas[name], found)
        todo.extend(found)
    return dict(sorted(seen.items()))


def main(spec_path: str, commit: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = {
        "x-source": {
            "repository": "https://github.com/openai/openai-openapi",
            "path": "openapi.json",
            "commit": commit,
            "openapi": spec["openapi"],
            "info.version": spec["info"]["version"],
            "license": "MIT, Copyright (c) OpenAI (see LICENSE beside this file)",
        },
        "components": {"schemas": closure(spec["components"]["schemas"])},
    }
    Path(__file__).with_name("chat_schemas.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
