"""A served model's chat template and sampling: the model's own template from a local tokenizer/GGUF or from the
server (llama.cpp's /props, vLLM's /tokenize), else a one-line refusal; neutral sampling settings per server kind,
so greedy output through the real llama-cpp-python server equals the in-process engine's. Servers that cannot run
here (llama.cpp's C++ server, vLLM, SGLang) are small fakes on 127.0.0.1 that answer only their own routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inferencekit.errors import UserError
from inferencekit.models import load_generator, resolve_model
from inferencekit.models.base import SamplingParams
from llama_servers import GGUF, Server

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "How much more money does Betty need?",
]
COMPLETION = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "text": "5", "finish_reason": "stop", "logprobs": None}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

Route = Callable[[dict], object]


class FakeServer:
    """Answers `routes` ("GET /path" or "POST /path" -> a function of the JSON body) and 404 to anything else;
    records every request; refuses after `max_requests`."""

    def __init__(self, routes: dict[str, Route], max_requests: int = 100) -> None:
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):
                pass

            def _answer(self, method: str) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                fake.requests.append((f"{method} {self.path}", body))
                route = routes.get(f"{method} {self.path}")
                status, data = (200, route(body)) if route and len(fake.requests) <= max_requests else (404, {})
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.root}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, route: str) -> list[dict]:
        return [body for name, body in self.requests if name == route]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def models(name: str) -> Route:
    return lambda body: {"object": "list", "data": [{"id": name, "object": "model"}]}


@pytest.fixture
def fake():
    servers: list[FakeServer] = []

    def start(routes: dict[str, Route]) -> FakeServer:
        servers.append(FakeServer(routes))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def served(url: str, name: str = "served-model", **args):
    return load_generator(resolve_model(name, backend="openai", model_args={"base_url": url, **args}))


def test_llama_cpp_server_props_template_and_neutral_sampling(fake):
    server = fake({"GET /v1/models": models("served-model"),
                   "GET /props": lambda body: {"chat_template": LLAMA3, "bos_token": "<|begin_of_text|>",
                                               "eos_token": "<|eot_id|>", "default_generation_settings": {}},
                   "POST /v1/completions": lambda body: COMPLETION})
    gen = served(server.url)
    try:
        prompt = gen.chat_prompt([{"role": "user", "content": "2 + 3?"}])
        assert prompt == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2 + 3?<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n")
        gen.generate([prompt], SamplingParams(max_new_tokens=4))
        gen.generate([prompt], SamplingParams(max_new_tokens=4, top_k=5))
        plain, with_top_k = server.bodies("POST /v1/completions")
        assert (plain["top_k"], plain["min_p"], plain["repeat_penalty"], plain["temperature"]) == (0, 0.0, 1.0, 0.0)
        assert with_top_k["top_k"] == 5  # what the user sets wins
        record = gen.engine_settings()
        assert record["chat_template"]["origin"] == f"{server.root}/props"
        assert record["chat_template"]["template"] == LLAMA3 and len(record["chat_template"]["sha256"]) == 64
        assert record["servers"][0]["kind"] == "llama.cpp"
    finally:
        gen.close()
    gen = served(server.url, extra_body={"repeat_penalty": 1.3, "min_p": 0.1})
    try:
        gen.generate(["x"], SamplingParams(max_new_tokens=4))
        last = server.bodies("POST /v1/completions")[-1]
        assert (last["repeat_penalty"], last["min_p"], last["top_k"]) == (1.3, 0.1, 0)
    finally:
        gen.close()


def test_vllm_renders_messages_through_tokenize(fake):
    def render(body: dict) -> str:  # the fake's "model template", applied server-side
        turns = "".join(f"<<{m['role']}>>{m['content']}" for m in body["messages"])
        return turns + ("<<assistant>>" if body.get("add_generation_prompt") else "")

    server = fake({"GET /v1/models": models("org/model"),
                   "GET /version": lambda body: {"version": "0.11.0"},
                   "POST /tokenize": lambda body: {"tokens": [ord(c) for c in render(body)], "count": 0},
                   "POST /detokenize": lambda body: {"prompt": "".join(chr(t) for t in body["tokens"])},
                   "POST /v1/completions": lambda body: COMPLETION})
    gen = served(server.url, "org/model")
    try:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"}]
        assert gen.chat_prompt(messages) == "<<system>>Be brief.<<user>>2 + 3?<<assistant>>"
        assert gen.chat_prompt(messages, add_generation_prompt=False) == "<<system>>Be brief.<<user>>2 + 3?"
        assert gen.chat_prompt(messages) == "<<system>>Be brief.<<user>>2 + 3?<<assistant>>"  # cached: no request
        tokenized = server.bodies("POST /tokenize")
        assert len(tokenized) == 3 and all(b["model"] == "org/model" for b in tokenized)  # the check, then two
        gen.generate(["x"], SamplingParams(max_new_tokens=4))
        (body,) = server.bodies("POST /v1/completions")
        assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
        assert body["presence_penalty"] == body["frequency_penalty"] == 0.0
        assert gen.engine_settings()["chat_template"]["origin"].endswith("/tokenize and /detokenize "
                                                                         "(vLLM applies the model's template)")
    finally:
        gen.close()


def test_a_server_without_a_template_is_refused_in_one_line(fake):
    server = fake({"GET /v1/models": models("org/model"),
                   "GET /get_model_info": lambda body: {"model_path": "/models/org/model"}})
    with pytest.raises(UserError) as err:
        served(server.url, "org/model")
    message = str(err.value)
    assert "\n" not in message and "sglang" in message
    assert "--model-arg tokenizer=" in message and "chat_template=" in message
    # a template given by hand is used as is, and recorded as such
    gen = served(server.url, "org/model", chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    try:
        assert gen.chat_prompt([{"role": "user", "content": "hi"}]) == "[hi]"
        assert gen.engine_settings()["chat_template"]["origin"] == "chat_template model argument"
        assert gen.engine_settings()["servers"][0]["sampling"]["repetition_penalty"] == 1.0
    finally:
        gen.close()


@pytest.fixture(scope="module")
def llama_server():
    server = Server(threads=1, alias="smollm2").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def in_process():
    gen = load_generator(resolve_model("smollm2-135m", model_args={"n_ctx": 1024, "n_threads": 1}))
    yield gen
    gen.close()


def test_alias_without_tokenizer_stops_with_exit_2(llama_server, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", "run", "--backend", "openai", "--model", "smollm2",
         "--model-arg", f"base_url={llama_server.url}", "--limit", "1", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "llama-cpp-python" in result.stderr and "tokenizer=" in result.stderr and "chat_template=" in result.stderr


@pytest.mark.slow
def test_greedy_through_the_server_equals_the_in_process_engine(llama_server, in_process):
    """No extra_body: the neutral settings alone make llama-cpp-python's server decode as the in-process engine."""
    gen = served(llama_server.url, "smollm2", tokenizer=GGUF, max_batch_sequences=1)
    try:
        assert gen.engine_settings()["servers"][0]["kind"] == "llama-cpp-python"
        assert gen.engine_settings()["chat_template"]["origin"] == f"GGUF file {GGUF}"
        prompts = [in_process.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
        assert [gen.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS] == prompts  # as in-process
        params = SamplingParams(max_new_tokens=48)
        want = [c[0].text for c in in_process.generate(prompts, params)]
        assert [c[0].text for c in gen.generate(prompts, params)] == want
    finally:
        gen.close()
    # the server's own default repeat penalty (1.1) is what the neutral settings undo
    penalised = served(llama_server.url, "smollm2", tokenizer=GGUF, extra_body={"repeat_penalty": 1.1})
    try:
        assert [c[0].text for c in penalised.generate(prompts, params)] != want
    finally:
        penalised.close()
