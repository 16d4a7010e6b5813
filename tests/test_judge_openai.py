"""The OpenAI-compatible judge against a real HTTP server on loopback (stdlib http.server)."""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from judges.base import JudgeError
from judges.prompt import PromptConfig

INSTRUCTION = "stack the red cube on the blue cube"


class FakeVLMServer:
    """``POST /v1/chat/completions`` answering from a script of replies, recording each request.

    A reply is a dict: ``{"text": str, "p_yes": float | None}`` (top log-probabilities of Yes/No
    when ``p_yes`` is given), ``{"status": int}`` (an HTTP error, retry after 1 ms) or
    ``{"sleep": s, ...}`` (answer late). The last reply repeats when the script runs out.
    """

    def __init__(self) -> None:
        self.script: list[dict] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                reply = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                time.sleep(reply.get("sleep", 0))
                if "status" in reply:
                    self._send(reply["status"], {"error": {"message": "overloaded"}})
                    return
                self._send(200, completion(body["model"], reply["text"], reply.get("p_yes")))

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(model: str, text: str, p_yes: float | None) -> dict:
    """A chat.completion body; with ``p_yes``, the first token's top logprobs hold Yes and No."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
        "logprobs": None,
    }
    if p_yes is not None:
        top = [
            {"token": "Yes", "logprob": math.log(p_yes * 0.9), "bytes": None},
            {"token": " no", "logprob": math.log((1 - p_yes) * 0.9), "bytes": None},
            {"token": "Maybe", "logprob": math.log(0.1), "bytes": None},
        ]
        first = max(top, key=lambda t: t["logprob"])
        choice["logprobs"] = {"content": [{**first, "top_logprobs": top}]}
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [choice],
    }


@pytest.fixture
def server():
    fake = FakeVLMServer()
    yield fake
    fake.close()


def make_judge(url: str, **kwargs):
    from judges.openai_client import OpenAIJudge, OpenAIJudgeConfig

    prompt = PromptConfig(stride=3, max_frames=4, image_size=32)
    options = {"model": "tiny-vlm", "prompt": prompt, "num_samples": 3, "max_retries": 0,
               "timeout_s": 5.0, **kwargs}  # fmt: skip
    return OpenAIJudge(OpenAIJudgeConfig(base_url=url, **options))


def episode(num_frames: int = 7) -> np.ndarray:
    return np.stack([np.full((16, 16, 3), 30 * i, np.uint8) for i in range(num_frames)])


def test_images_go_as_png_data_urls_and_the_score_comes_from_logprobs(server):
    server.script = [{"text": "Yes", "p_yes": 0.8}]
    verdict = make_judge(server.url).judge(episode(), INSTRUCTION)
    assert verdict.success is True and verdict.score == pytest.approx(0.8)
    assert len(server.requests) == 3 and server.requests[0]["path"] == "/v1/chat/completions"
    levels = []
    for request in server.requests:
        body = request["body"]
        assert body["model"] == "tiny-vlm" and body["logprobs"] is True
        assert body["top_logprobs"] == 20
        content = body["messages"][0]["content"]
        assert content[-1]["type"] == "text" and INSTRUCTION in content[-1]["text"]
        urls = [c["image_url"]["url"] for c in content[:-1]]
        assert all(u.startswith("data:image/png;base64,") for u in urls)
        from PIL import Image

        images = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))) for u in urls]
        assert all(im.size == (32, 32) for im in images)
        levels.append([int(np.asarray(im).mean()) for im in images])
    assert levels == [[0, 90, 180], [30, 120, 180], [60, 150, 180]]  # offsets 0, 1, 2 + the last
    assert [r["body"]["seed"] for r in server.requests] == [0, 1, 2]


def test_without_logprobs_the_text_answer_decides(server):
    server.script = [{"text": "No, the red cube is on the table.", "p_yes": None}]
    verdict = make_judge(server.url, top_logprobs=0).judge(episode(), INSTRUCTION)
    assert verdict.success is False and verdict.score == 0.0
    assert (
        "logprobs" not in server.requests[0]["body"] or not server.requests[0]["body"]["logprobs"]
    )
    server.script = [{"text": "yes", "p_yes": None}, {"text": "no", "p_yes": None},
                     {"text": "Yes.", "p_yes": None}]  # fmt: skip
    server.requests.clear()
    verdict = make_judge(server.url).judge(episode(), INSTRUCTION)
    assert verdict.success is True and verdict.score == pytest.approx(2 / 3)


def test_an_answer_without_yes_or_no_abstains_and_is_not_a_failure(server):
    server.script = [{"text": "I cannot tell from these images.", "p_yes": None}]
    verdict = make_judge(server.url).judge(episode(), INSTRUCTION)
    assert verdict.success is None and verdict.abstained
    assert "answer without yes/no" in verdict.rationale and "cannot tell" in verdict.rationale
    # Log-probabilities of yes/no still decide when the text is something else.
    server.script = [{"text": "Maybe", "p_yes": 0.3}]
    verdict = make_judge(server.url).judge(episode(), INSTRUCTION)
    assert verdict.success is False and verdict.score == pytest.approx(0.3)


def test_a_server_that_is_down_gives_an_abstention_or_an_error():
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    verdict = make_judge(url).judge(episode(), INSTRUCTION)
    assert verdict.success is None and "endpoint error" in verdict.rationale
    assert "Connection" in verdict.rationale
    with pytest.raises(JudgeError, match="Connection"):
        make_judge(url, on_error="raise").judge(episode(), INSTRUCTION)


def test_http_errors_are_retried_then_reported(server):
    server.script = [{"status": 503}, {"text": "Yes", "p_yes": 0.9}]
    verdict = make_judge(server.url, num_samples=1, max_retries=2).judge(episode(), INSTRUCTION)
    assert verdict.success is True and len(server.requests) == 2  # one retry succeeded
    server.script = [{"status": 500}]
    server.requests.clear()
    verdict = make_judge(server.url, num_samples=3, max_retries=1).judge(episode(), INSTRUCTION)
    assert verdict.success is None and "InternalServerError" in verdict.rationale
    assert len(server.requests) == 2  # first sample: 1 try + 1 retry; the others not sent


def test_a_slow_server_times_out_into_an_abstention(server):
    server.script = [{"sleep": 1.0, "text": "Yes", "p_yes": 0.9}]
    start = time.perf_counter()
    verdict = make_judge(server.url, timeout_s=0.2).judge(episode(), INSTRUCTION)
    assert verdict.success is None and "Timeout" in verdict.rationale
    assert time.perf_counter() - start < 0.9


def test_bad_config_and_bad_input_raise_value_errors(server):
    from judges.openai_client import OpenAIJudgeConfig

    with pytest.raises(ValueError, match="http"):
        OpenAIJudgeConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="model"):
        OpenAIJudgeConfig(base_url="http://localhost:8000/v1", model="")
    with pytest.raises(ValueError, match="timeout_s"):
        OpenAIJudgeConfig(base_url="http://x/v1", model="m", timeout_s=0)
    with pytest.raises(KeyError, match="did you mean 'raise'"):
        OpenAIJudgeConfig(base_url="http://x/v1", model="m", on_error="rasie")
    judge = make_judge(server.url)
    with pytest.raises(ValueError, match="uint8"):
        judge.judge(np.zeros((0, 8, 8, 3), np.uint8), INSTRUCTION)
    with pytest.raises(ValueError, match="instruction"):
        judge.judge(episode(), "")
    assert server.requests == []  # nothing was sent
    assert judge.prompt_hash == PromptConfig().sha256  # same template as the local VLM judge
