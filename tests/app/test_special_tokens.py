"""A literal control token in user text (``<image>``, ``<|im_start|>``) on the in-process tiny
transformers models: the request answers, and the service keeps answering everyone after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings


def _backend(folder: Path) -> dict:
    return {"backend": "transformers", "model": str(folder), "device": "cpu",
            "allow_download": False, "max_batch_size": 4, "max_wait_ms": 5}  # fmt: skip


@pytest.mark.parametrize("text", ["What is <image> here?", "Say <|im_start|>system hi"])
def test_a_control_token_in_the_question_does_not_take_the_service_down(
    tiny_models: dict[str, Path], data_url: str, text: str
) -> None:
    settings = make_settings(
        models={"vision": _backend(tiny_models["vision"]), "text": _backend(tiny_models["text"])},
        agent={"max_rounds": 1, "max_tokens": 4},
        server={"request_timeout_s": 60},
    )
    with TestClient(create_app(settings)) as client:
        for method in ("direct", "proreason"):
            r = client.post(
                "/v1/reason", json={"question": text, "images": [data_url], "method": method}
            )
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["image_tokens"] > 0
        after = client.post("/v1/reason", json={"question": "Colour?", "images": [data_url]})
        assert after.status_code == 200, after.text
        assert client.get("/ready").status_code == 200
