"""The simulated engine: protocol shape, role recognition on the real prompts, scenario
determinism, queueing, and the bound arithmetic."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager

from agents.prompts import PromptSet
from bench.loadgen import make_image
from bench.reference import ReferenceClient
from bench.sim_core import CostModel
from bench.sim_engine import SimServer
from bench.sim_script import SCENARIOS, Script, parse_request

FAST = CostModel(step_base_ms=1.0, step_per_seq_ms=0.01, prefill_per_token_ms=0.001)


@asynccontextmanager
async def sim_client(cost: CostModel = FAST) -> AsyncIterator[httpx.AsyncClient]:
    """The engine in-process (its step loop runs on the test's own event loop)."""
    app = SimServer(cost, "solve2").app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            yield client


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client() as client:
        yield client


def _dispatcher_body(**extra: Any) -> dict[str, Any]:
    text = '[q=t1] What is shown?\nReply with JSON: {"expert": "vision" or "insight"}'
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


async def test_chat_completion_json_shape(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json=_dispatcher_body())
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "m"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    decision = json.loads(choice["message"]["content"])  # the scripted dispatcher answers JSON
    assert decision["expert"] == "vision"
    assert decision["question"].startswith("(q t1, fact 1)")
    usage = data["usage"]
    assert usage["completion_tokens"] == math.ceil(len(choice["message"]["content"]) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


async def test_stream_sse_shape_and_same_content(sim: httpx.AsyncClient) -> None:
    plain = (await sim.post("/v1/chat/completions", json=_dispatcher_body(max_tokens=6))).json()
    body = _dispatcher_body(max_tokens=6, stream=True, stream_options={"include_usage": True})
    async with sim.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "length"  # cut at max_tokens=6
    assert all(c["choices"][0].get("finish_reason") is None for c in content[1:-1])
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert text == plain["choices"][0]["message"]["content"]
    assert plain["choices"][0]["finish_reason"] == "length"


async def test_bad_requests_get_vllm_shaped_errors(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    response = await sim.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400


async def test_concurrency_beyond_max_num_seqs_queues() -> None:
    async with sim_client(CostModel(max_num_seqs=2, step_base_ms=2.0)) as client:
        bodies = [
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": f"hi {i}"}],
            }
            for i in range(6)
        ]
        await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
        stats = (await client.get("/sim/stats?calls=1")).json()
    assert stats["calls"] == 6
    assert stats["max_running"] == 2
    assert stats["max_waiting"] >= 3
    assert stats["queue_time_s"] > 0
    log = stats["call_log"]
    # never more than max_num_seqs sequences between admission and finish at any instant
    for call in log:
        t = call["admitted"] + 1e-6
        assert sum(c["admitted"] <= t < c["finished"] for c in log) <= 2


def _render(prompts: PromptSet, name: str, **fields: Any) -> str:
    prompt = prompts[name]
    return (prompt.system or "") + "\n" + prompt.render(**fields)


def test_roles_are_recognised_on_the_project_prompts() -> None:
    prompts = PromptSet.load()
    script = Script("solve2")
    question = "[q=7] Which shape is red?"
    notes = "1. vision: SIMFACT#1 for q 7"

    def role(text: str, image: bool = False) -> str:
        content: Any = text
        if image:
            content = [
                {"type": "image_url", "image_url": {"url": make_image(1)}},
                {"type": "text", "text": text},
            ]
        body = {"messages": [{"role": "user", "content": content}]}
        return script.role_of(parse_request(body))[0]

    common = {"history": "", "question": question, "memory": notes, "last_expert": "vision"}
    assert role(_render(prompts, "dispatcher", **common)) == "dispatcher"
    assert role(_render(prompts, "dispatcher_parallel", max_questions=3, **common)) == "dispatcher"
    assert role(_render(prompts, "referee", **common)) == "referee"
    sub = "(q 7, fact 2) What does visual detail 2 of the image show?"
    assert role(_render(prompts, "vision", sub_question=sub), image=True) == "vision"
    insight = "(q 7, insight 1) What follows?"
    assert role(_render(prompts, "insight", history="", memory=notes, sub_question=insight)) == (
        "insight"
    )
    fmt = prompts.text("answer_summary_open")
    assert role(_render(prompts, "summarizer", answer_format=fmt, **common)) == "summarizer"
    assert role(_render(prompts, "fallback", answer_format=fmt, **common), image=True) == (
        "fallback"
    )


def test_scripted_answers_are_deterministic_and_follow_the_scenario() -> None:
    def dispatch(script: Script, memory: str) -> str:
        text = f'[q=9] Q?\nNotes:\n{memory}\nReply {{"expert": ...}}'
        return script.answer(parse_request({"messages": [{"role": "user", "content": text}]})).text

    a, b = Script("parse_fail"), Script("parse_fail")
    first = [dispatch(a, ""), dispatch(a, ""), dispatch(a, "SIMFACT#1")]
    assert first == [dispatch(b, ""), dispatch(b, ""), dispatch(b, "SIMFACT#1")]
    assert "{" not in first[0]  # the scripted parse failure
    assert json.loads(first[1])["question"].startswith("(q 9, fact 1)")
    assert json.loads(first[2])["question"].startswith("(q 9, fact 2)")


def test_expected_calls_of_the_scenarios() -> None:
    assert SCENARIOS["solve2"].expected_calls() == {
        "dispatcher": 2, "vision": 2, "insight": 0, "referee": 2, "summarizer": 1,
        "fallback": 0, "direct": 0,
    }  # fmt: skip
    assert sum(SCENARIOS["max_rounds"].expected_calls().values()) == 25
    assert SCENARIOS["multi_fact"].expected_calls(parallel=True)["dispatcher"] == 1


def test_bound_arithmetic() -> None:
    cost = CostModel(max_num_seqs=64, step_base_ms=6.0, step_per_seq_ms=0.1)
    # 640 decode tokens: 10 full steps of 12.4 ms; 1000 prefill tokens at 0.02 ms
    expected = 1.0 / (10 * 0.0124 + 1000 * 0.02e-3)
    assert cost.bound_qps(640, 1000) == pytest.approx(expected)


@pytest.mark.slow
def test_real_process_with_the_reference_client_and_openai() -> None:
    """The CLI server, the official client, and call counts per role match the scenario."""
    from openai import OpenAI

    from bench.procs import sim_proc

    with sim_proc("parse_fail", {"step_base_ms": 0.5, "step_per_seq_ms": 0.01}) as sim:
        client = OpenAI(base_url=sim.url + "/v1", api_key="x")
        out = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "[q=x] hello"}], max_tokens=3
        )
        assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
        stream = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "[q=x] hello"}], stream=True
        )
        assert "SIMDIRECT" in "".join(c.choices[0].delta.content or "" for c in stream)
        httpx.post(sim.url + "/sim/reset")
        ref = ReferenceClient(sim.url + "/v1", vision_model="v", text_model="t")
        run = ref.run("[q=r1] Which shapes?", make_image(3))
        stats = httpx.get(sim.url + "/sim/stats").json()
    expected = SCENARIOS["parse_fail"].expected_calls()
    assert run.stop_reason == "solved" and run.rounds == 3
    assert {k: v["calls"] for k, v in stats["by_role"].items()} == {
        k: v for k, v in expected.items() if v
    }
    assert stats["questions"] == 1 and stats["bound_qps"] > 0
