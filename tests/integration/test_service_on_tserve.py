"""The whole service over a real loopback socket, its models on real ``transformers serve``
upstreams, driven by the official ``openai`` client and httpx.

Two deployment shapes: ``vllm`` (configs/vllm.yaml: the LVLM on one upstream, the text LLM on
another) and ``pure`` (configs/pure.yaml: one LVLM upstream plays every role). Each runs on every
``model_set`` (tests/integration/conftest.py): the tiny random models and the trained demo models
committed under tests/data/demo-models (or the folder ``$PROREASON_DEMO_MODELS`` names). Random
weights cannot solve anything (the loop falls back), so most tests assert on structure;
``test_demo_models_solve`` asserts the demo models solve easy-VQA test questions, right.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import httpx
import pytest
from openai import OpenAI

from agents.types import StopReason
from app.main import create_app
from app.settings import ModelsConfig, load_settings
from models.config import BackendConfig
from tests.app.conftest import LiveServer, parse_sse
from tests.integration.conftest import ModelSet, TServePool

pytestmark = pytest.mark.slow

API_KEY = "tserve-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SHAPES = ("vllm", "pure")


class Service:
    def __init__(self, live: LiveServer, shape: str, models: ModelSet) -> None:
        self.live, self.shape, self.models = live, shape, models
        self.url = live.url
        self.oai = OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def reason(self, **body: object) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/reason", json=body, headers=AUTH, timeout=120)

    def model_of(self, role: str) -> str:
        """The upstream model a role's calls must reach in this shape."""
        on_vision = self.shape == "pure" or role in ("vision", "fallback")
        return str(self.models.vision if on_vision else self.models.text)


@pytest.fixture(scope="module", params=SHAPES)
def service(
    request: pytest.FixtureRequest,
    model_set: ModelSet,
    tserve: TServePool,
    upstream_config: Callable[..., BackendConfig],
) -> Iterator[Service]:
    shape = request.param
    vision, text = tserve(model_set.vision, model_set.text)
    models = ModelsConfig(
        vision=upstream_config(vision, context_length=model_set.context_length),
        text=upstream_config(text, context_length=model_set.context_length)
        if shape == "vllm"
        else None,
    )
    settings = load_settings(
        shape,  # the profile whose shape this is; models, limits and sizes replaced
        models=models,
        agent={
            "max_rounds": 2 if model_set.random else 4,
            "max_tokens": 12 if model_set.random else 96,
            "structured_decisions": False,  # transformers serve ignores response_format
        },
        server={"api_keys": API_KEY, "max_in_flight": 8, "request_timeout_s": 120},
    )
    assert (settings.models.text is None) == (shape == "pure")
    with LiveServer(create_app(settings)) as live:
        yield Service(live, shape, model_set)


def image_turn(text: str, url: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def test_ready_sees_the_upstreams(service: Service) -> None:
    r = httpx.get(f"{service.url}/ready")
    assert r.status_code == 200, r.text


def test_chat_completion(service: Service, data_url: str) -> None:
    resp = service.oai.chat.completions.create(
        model="proreason", messages=[image_turn("What shape is red?", data_url)]
    )
    assert resp.object == "chat.completion"
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_completion_streaming(service: Service, data_url: str) -> None:
    with service.oai.chat.completions.create(
        model="proreason",
        messages=[image_turn("What shape is red?", data_url)],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    steps = [c.choices[0].delta.model_extra.get("reasoning") for c in chunks if c.choices]
    assert any(steps)  # the loop's steps are streamed as reasoning
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_direct_baseline_streams_tokens_from_the_upstream(service: Service, data_url: str) -> None:
    stream = service.oai.chat.completions.create(
        model="proreason-direct", messages=[image_turn("What shape?", data_url)], stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_reason_with_trace(service: Service, data_url: str) -> None:
    r = service.reason(question="What shape is red?", images=[data_url], trace=True)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["stop_reason"] in get_args(StopReason)
    assert result["stop_reason"] in ("solved", "max_rounds_fallback")
    trace = result["trace"]
    assert trace and trace[0]["role"] == "dispatcher"
    assert [s["index"] for s in trace] == list(range(len(trace)))
    for step in trace:
        assert step.get("error") is None, step  # every call reached its upstream and came back
        assert step["backend"] == "openai"
        assert step["model"] == service.model_of(step["role"])
        assert step["usage"]["prompt_tokens"] > 0
    if result["stop_reason"] == "max_rounds_fallback":
        assert trace[-1]["role"] == "fallback"
    usage = result["usage"]
    assert usage["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in trace)
    assert usage.get("image_tokens") is None  # transformers serve does not report them
    assert set(result["usage_by_role"]) == {s["role"] for s in trace}


def test_reason_streaming(service: Service, data_url: str) -> None:
    body = {"question": "What shape is red?", "images": [data_url], "stream": True}
    with httpx.stream(
        "POST", f"{service.url}/v1/reason", json=body, headers=AUTH, timeout=120
    ) as r:
        assert r.status_code == 200
        events = parse_sse(r.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "dispatch" and kinds[-2:] == ["result", "done"]
    result = json.loads(dict(events)["result"])
    assert result["stop_reason"] in ("solved", "max_rounds_fallback")


def test_text_only_question(service: Service) -> None:
    r = service.reason(question="What is two plus two?", trace=True)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["stop_reason"] in get_args(StopReason)
    assert all(s.get("error") is None for s in result["trace"])


def test_a_question_the_upstream_cannot_take_fails_fast_and_readably(
    service: Service, data_url: str
) -> None:
    """A literal ``<image>`` in the question makes the LVLM upstream answer 500 every time: the
    calls that carry it are rejected after one retry; the service never says "unavailable".

    ``direct`` puts the question itself into the LVLM call (the demo models' loop asks the LVLM
    only its own sub-question, so it would never carry the text there)."""
    started = time.monotonic()
    r = service.reason(
        question="Is <image> a red square?", images=[data_url], trace=True, method="direct"
    )
    elapsed = time.monotonic() - started
    assert r.status_code != 503, r.text
    assert "model_unavailable" not in r.text
    if r.status_code == 200:
        failed = [s for s in r.json()["trace"] if s.get("error")]
        assert failed and all("ModelRejected" in s["error"] for s in failed)
        assert all("Internal Server Error" in s["error"] for s in failed)
    else:
        error = r.json()["error"]
        assert r.status_code == 502 and error["code"] == "model_rejected", r.text
        assert "Internal Server Error" in error["message"]
    assert elapsed < 30


def _easy_vqa_items(n: int) -> list[tuple[str, str, Path]]:
    """The first ``n`` easy-VQA TEST questions (images the demo models never saw)."""
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    return [(questions[i], answers[i], Path(paths[image_ids[i]])) for i in range(n)]


def test_demo_models_solve(service: Service) -> None:
    """The trained demo models reason to ``solved`` and right answers through a third-party
    server, as a user sends questions: plain JSON and the official client's chat completions."""
    if service.models.random:
        pytest.skip("random-weight tiny models cannot solve a question (the demo set can)")
    items = _easy_vqa_items(6)
    right = 0
    for question, answer, image in items:
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        r = service.reason(question=question, images=[url], trace=True)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["stop_reason"] == "solved", result["trace"]
        roles = [s["role"] for s in result["trace"]]
        assert roles[:2] == ["dispatcher", "vision"] and "referee" in roles, roles
        assert roles[-1] == "summarizer", roles
        right += result["answer"].strip().lower() == answer
    # docs/accuracy.md: ~100% assisted; pure mode ~80% (its referee misses yes/no comparisons)
    assert right >= len(items) - (1 if service.shape == "vllm" else 2), right
    question, answer, image = items[0]
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    chat = service.oai.chat.completions.create(
        model="proreason",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": question},
        ]}],
    )  # fmt: skip
    assert chat.choices[0].message.content.strip().lower() == answer


def _png_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_demo_models_read_text_with_the_ocr_expert(service: Service) -> None:
    """A question whose answer is written in the image: with ``ocr`` the dispatcher asks the OCR
    expert (the real RapidOCR), the referee finds the cell, the summarizer copies it. Without
    it the dispatcher asks the vision expert to read (the demo LVLM reads 64x64 pixels).

    Signs and numbers are answered (100% and 86% on 100 test questions, docs/accuracy.md); a
    price list or a table is read right by the OCR expert but the demo text LM mostly fails to
    look the cell up (28% / 6%), so for those only the read and the trace are checked."""
    if service.models.random:
        pytest.skip("random-weight tiny models cannot solve a question (the demo set can)")
    if service.shape == "pure":
        pytest.skip("the demo LVLM was not trained to play the text roles with the OCR expert")
    pytest.importorskip("rapidocr")
    from evals.text_images import text_questions

    questions = text_questions("test", 12)  # the kinds in turn: word, number, price, table
    right = answerable = 0
    for q in questions[:8]:
        r = service.reason(question=q.question, images=[_png_url(q.case.png())], trace=True,
                           ocr=True)  # fmt: skip
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["stop_reason"] == "solved", result["trace"]
        roles = [s["role"] for s in result["trace"]]
        assert roles == ["dispatcher", "ocr", "referee", "summarizer"], roles
        read = result["trace"][1]["output"]
        assert all(cell in read for cell in q.case.cells), read  # RapidOCR read every cell
        if q.kind in ("word", "number"):
            answerable += 1
            right += result["answer"].strip() == q.answer
    assert right >= answerable - 1, right
    r = service.reason(question=questions[2].question, trace=True, ocr=False,
                       images=[_png_url(questions[2].case.png())])  # fmt: skip
    assert r.status_code == 200, r.text
    roles = [s["role"] for s in r.json()["trace"]]
    assert roles[:2] == ["dispatcher", "vision"] and "ocr" not in roles, roles


def test_demo_models_answer_a_follow_up_turn(service: Service) -> None:
    """A chat UI's second message: the earlier turn (image, question, the service's answer) in
    the history, a new question about the same image, through the official client."""
    if service.models.random:
        pytest.skip("random-weight tiny models cannot solve a question (the demo set can)")
    if service.shape == "pure":
        pytest.skip("the demo LVLM was not trained on follow-up turns for the text roles")
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    by_image: dict[int, list[int]] = {}
    for i, image_id in enumerate(image_ids[:400]):
        by_image.setdefault(image_id, []).append(i)
    pairs = [ids[:2] for ids in by_image.values() if len(ids) >= 2][:4]
    right = 0
    for first, second in pairs:
        url = _png_url(Path(paths[image_ids[first]]).read_bytes())
        turn1 = service.oai.chat.completions.create(
            model="proreason", messages=[image_turn(questions[first], url)]
        )
        answer1 = turn1.choices[0].message.content
        turn2 = service.oai.chat.completions.create(
            model="proreason",
            messages=[
                image_turn(questions[first], url),
                {"role": "assistant", "content": answer1},
                {"role": "user", "content": questions[second]},
            ],
        )
        right += turn2.choices[0].message.content.strip().lower() == answers[second]
    assert right >= len(pairs) - 1, right
