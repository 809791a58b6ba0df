"""The streamed answer on the ``tiny`` models (real transformers code: TransformersBackend.stream
with its AsyncTextIteratorStreamer), through the official openai client on a loopback socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from app.main import create_app
from tests.app.conftest import LiveServer, make_settings


def _backend(folder: Path) -> dict:
    return {"backend": "transformers", "model": str(folder), "device": "cpu",
            "allow_download": False, "max_batch_size": 4, "max_wait_ms": 5}  # fmt: skip


@pytest.fixture(scope="module")
def live(tiny_models: dict[str, Path]):
    settings = make_settings(
        models={"vision": _backend(tiny_models["vision"]), "text": _backend(tiny_models["text"])},
        # greedy, so that the streamed and the non-streamed reply are the same; one round: the
        # dispatcher's gibberish spends it and the fallback (the LVLM) answers
        agent={"max_rounds": 1, "max_tokens": 24, "temperature": 0.0},
        server={"request_timeout_s": 120},
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize(("model", "role"), [("proreason-direct", "direct"),
                                             ("proreason", "fallback")])  # fmt: skip
def test_the_tiny_models_stream_the_answer_in_pieces(
    live: LiveServer, data_url: str, model: str, role: str
) -> None:
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "text", "text": "What colour is the square?"}]}]  # fmt: skip
    whole = oai.chat.completions.create(
        model=model, messages=messages, extra_body={"proreason": {"trace": True}}
    )
    assert whole.model_extra["proreason"]["steps"][-1]["role"] == role
    with oai.chat.completions.create(model=model, messages=messages, stream=True) as stream:
        chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3  # piece by piece as the model generates (gibberish: random weights)
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
