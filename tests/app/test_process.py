"""``proreason serve`` as a real process (run_server: uvicorn, JSON logs) on a loopback upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.app.conftest import free_port
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.roles import RoleResponder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_process_answers_and_logs_json_lines(data_url: str) -> None:
    with FakeOpenAIServer(model="fake-vlm", responder=RoleResponder()) as upstream:
        port = free_port()
        env = {
            **os.environ,
            "PROREASON_MODELS__VISION__BASE_URL": upstream.base_url,
            "PROREASON_MODELS__VISION__MODEL": "fake-vlm",
            "PROREASON_MODELS__VISION__MAX_RETRIES": "0",
            "PROREASON_SERVER__API_KEYS": "proc-key",
        }
        cmd = [sys.executable, "-m", "app.cli", "serve", "--profile", "pure"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, "the server process exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
            oai = OpenAI(base_url=f"{base}/v1", api_key="proc-key", max_retries=0)
            resp = oai.chat.completions.create(
                model="proreason",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": data_url}},
                            {"type": "text", "text": "Where?"},
                        ],
                    }
                ],
                extra_headers={"X-Request-Id": "proc-1"},
            )
            assert resp.choices[0].message.content == "the red square is left of the blue circle"
            assert resp.id == "chatcmpl-proc-1"
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=30)
        # uvicorn shuts down cleanly, then re-raises the signal it caught
        assert proc.returncode in (0, -15), stderr
        assert "Application shutdown complete." in stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry.get("msg") == "request"]
    chat = next(e for e in requests if e["request_id"] == "proc-1")
    assert chat["path"] == "/v1/chat/completions"
    assert (chat["status"], chat["stop_reason"]) == (200, "solved")
    assert all(line.startswith("{") for line in stderr.splitlines() if line.strip()), stderr
    assert not any("color_message" in e or e["logger"] == "httpx" for e in lines)
