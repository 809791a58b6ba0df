"""A simulated continuous-batching engine behind a real OpenAI-compatible HTTP server.

    python -m bench.sim_engine --port 8000 --scenario solve2 [--max-num-seqs 64 ...]

It speaks vLLM's chat-completions protocol (JSON and SSE, ``stream_options.include_usage``,
vLLM-shaped errors, ``/health``, ``/v1/models``, ``/metrics``), serves any model name (so both of
the service's upstreams can point at one engine), and answers each ProReason role with scripted
content (``bench.sim_script``). Time is spent by the shared step loop of ``bench.sim_core``:
concurrent requests ARE the batch, as in vLLM.

Benchmark endpoints:

- ``GET /sim/stats`` (``?calls=1`` adds the per-call log): calls, questions, the engine's own call
  time, batch sizes, queueing, per-role tokens and the bound (questions/s at saturation) implied
  by the cost model and the measured calls/tokens per question.
- ``POST /sim/reset``: clears the statistics, the call log and the per-question script state.
- ``GET /sim/config``: the cost model and the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import time
import typing
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench.sim_core import CostModel, SimEngine
from bench.sim_script import SCENARIOS, BadRequest, ParsedPrompt, Script, parse_request, tokenize

log = logging.getLogger(__name__)

#: tokens per prefix-cache block (vLLM's default block size)
BLOCK_TOKENS = 16


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


class SimServer:
    """The HTTP face of one :class:`SimEngine` and its :class:`Script`."""

    def __init__(self, cost: CostModel, scenario: str, *, max_model_len: int = 32768) -> None:
        self.cost = cost
        self.script = Script(scenario)
        self.max_model_len = max_model_len
        self.engine: SimEngine | None = None
        self.models_seen: dict[str, None] = {}

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.engine = SimEngine(self.cost)
        self.engine.start()
        try:
            yield
        finally:
            await self.engine.stop()

    def app(self) -> ASGIApp:
        """The Starlette app, wrapped so chat requests are timed at the ASGI edge as well."""
        inner = self._starlette()

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
                await inner(scope, receive, send)
                return
            t0 = time.monotonic()

            async def timed_send(message: Message) -> None:
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    if self.engine is not None:
                        self.engine.stats.http_s += time.monotonic() - t0
                        self.engine.stats.http_calls += 1

            await inner(scope, receive, timed_send)

        return timed

    def _starlette(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/sim/stats", self.stats, methods=["GET"]),
            Route("/sim/reset", self.reset, methods=["POST"]),
            Route("/sim/config", self.config, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan)

    @property
    def _engine(self) -> SimEngine:
        if self.engine is None:
            raise RuntimeError("the engine runs only inside the app's lifespan")
        return self.engine

    # ------------------------------------------------------------------ prompt accounting

    def _prompt_tokens(self, prompt: ParsedPrompt) -> tuple[int, int, int]:
        """(prompt tokens, cached tokens, image tokens), with block-level prefix caching.

        Like vLLM's automatic prefix caching: the prompt is cut into blocks of ``BLOCK_TOKENS``
        tokens (an image is one block with the text before it), each keyed by a hash chained over
        every block before it; a request reuses the longest run of leading blocks seen before.
        The last, partial block is never cached.
        """
        cost = self.cost
        block_chars = BLOCK_TOKENS * cost.chars_per_token
        blocks: list[tuple[str, int]] = []  # (key, tokens)
        digest = hashlib.sha1()
        pending = ""
        total = 0
        for kind, content in prompt.parts:
            if kind == "image":
                digest.update(pending.encode("utf-8", "replace"))
                digest.update(hashlib.sha1(content.encode("ascii", "replace")).digest())
                size = cost.image_tokens + cost.text_tokens(pending)
                blocks.append((digest.hexdigest(), size))
                total += size
                pending = ""
                continue
            pending += content
            while len(pending) >= block_chars:
                digest.update(pending[:block_chars].encode("utf-8", "replace"))
                blocks.append((digest.hexdigest(), BLOCK_TOKENS))
                total += BLOCK_TOKENS
                pending = pending[block_chars:]
        total += cost.text_tokens(pending)
        hits = self._engine.prefix_hit([key for key, _ in blocks])
        cached = 0
        for hit, (_, size) in zip(hits, blocks, strict=True):
            if not hit:
                break
            cached += size
        cached = min(cached, total - 1)  # vLLM always computes the last prompt token
        return total, max(cached, 0), cost.image_tokens * len(prompt.images)

    # ------------------------------------------------------------------ routes

    async def chat(self, request: Request) -> Response:
        engine = self._engine
        arrival = engine.now()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            prompt = parse_request(body)
        except BadRequest as exc:
            return _error(400, str(exc))
        model = str(body.get("model") or "sim")
        self.models_seen.setdefault(model, None)
        answer = self.script.answer(prompt)
        prompt_tokens, cached, image_tokens = self._prompt_tokens(prompt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is None:
            max_tokens = self.max_model_len - prompt_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        if prompt_tokens + 1 > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens.",
            )
        chunks = tokenize(answer.text, self.cost.chars_per_token)
        finish = "stop"
        if len(chunks) > max_tokens:
            chunks, finish = chunks[:max_tokens], "length"
        stream = bool(body.get("stream"))
        seq = engine.submit(
            model=model,
            role=answer.role,
            qid=answer.qid,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            chunks=chunks,
            finish_reason=finish,
            stream=stream,
        )
        seq.record.arrival = arrival
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(chunks),
            "total_tokens": prompt_tokens + len(chunks),
            "prompt_tokens_details": {
                "cached_tokens": cached,
                "multimodal_tokens": {"image": image_tokens},
            },
        }
        rid = f"chatcmpl-sim-{seq.record.id}"
        created = int(time.time())
        if stream:
            opts = body.get("stream_options") or {}
            include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
            return StreamingResponse(
                self._sse(seq, rid, created, model, finish, usage if include_usage else None),
                media_type="text/event-stream",
            )
        if not await self._wait_or_disconnect(request, seq):
            return Response(status_code=499)  # nobody is listening any more
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(chunks)},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
        )

    async def _wait_or_disconnect(self, request: Request, seq: Any) -> bool:
        """Wait for the sequence (True); abort it in the engine if the client goes away."""
        engine = self._engine
        done = asyncio.ensure_future(engine.wait(seq))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not done.done():
                done.cancel()
                engine.abort(seq)
        return done.done() and not done.cancelled()

    async def _sse(
        self,
        seq: Any,
        rid: str,
        created: int,
        model: str,
        finish: str,
        usage: dict[str, Any] | None,
    ) -> AsyncIterator[str]:
        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
            chunk: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if extra:
                chunk.update(extra)
            return f"data: {json.dumps(chunk)}\n\n"

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        pending: str | None = None
        async for token in self._engine.tokens(seq):
            if pending is not None:
                yield event([{"index": 0, "delta": {"content": pending}, "finish_reason": None}])
            pending = token
        yield event([{"index": 0, "delta": {"content": pending or ""}, "finish_reason": finish}])
        if usage is not None:
            yield event([], {"usage": usage})
        yield "data: [DONE]\n\n"

    async def models(self, _request: Request) -> Response:
        names = list(self.models_seen) or ["sim"]
        cards = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "proreason-sim",
                "max_model_len": self.max_model_len,
            }
            for name in names
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def health(self, _request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(self, _request: Request) -> Response:
        engine = self._engine
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{model_name="sim"}} {len(engine.running)}',
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="sim"}} {len(engine.waiting)}',
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def stats(self, request: Request) -> Response:
        include = request.query_params.get("calls") in ("1", "true")
        out = self._engine.summary(include_calls=include)
        out["scenario"] = self.script.scenario
        return JSONResponse(out)

    async def reset(self, _request: Request) -> Response:
        self._engine.reset_stats()
        self.script.reset()
        return JSONResponse({"ok": True})

    async def config(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "cost_model": dataclasses.asdict(self.cost),
                "scenario": self.script.scenario,
                "scenarios": {name: s.description for name, s in SCENARIOS.items()},
                "max_model_len": self.max_model_len,
            }
        )


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# --------------------------------------------------------------------------- CLI


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_engine",
        description="A simulated continuous-batching engine behind an OpenAI-compatible server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--scenario",
        default="solve2",
        help=f"default scenario: {', '.join([*SCENARIOS, 'mixed'])} "
        "(a question may pick its own with [scenario=NAME])",
    )
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--log-level", default="warning")
    hints = typing.get_type_hints(CostModel)
    for f in dataclasses.fields(CostModel):
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(_flag(f.name), type=kind, default=None)
    return parser


def cost_from_args(args: argparse.Namespace) -> CostModel:
    over = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(CostModel)
        if getattr(args, f.name) is not None
    }
    return CostModel(**over)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    server = SimServer(cost_from_args(args), args.scenario, max_model_len=args.max_model_len)
    uvicorn.run(
        server.app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=60,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
