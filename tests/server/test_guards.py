"""What a hostile or careless client gets: a JSON error with the right status, and a server still serving.

The scripted engine stands in for llama.cpp (the guards are the same whatever the engine)."""

from __future__ import annotations

import json

import httpx
import pytest
from servers import running

from localr1.engine.fake import FakeEngine, fake_model_info

SCRIPT = ["<think>\n", "Hmm, ", "2+2.", "</think>", "\n\n", "It is ", "4."]
USER = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def fake():
    return FakeEngine([SCRIPT] * 50, info=fake_model_info("fake-r1"))


@pytest.fixture
def server(fake):
    with running(fake, "fake-r1") as srv:
        yield srv


def post(server, path, body=None, **kwargs):
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


def still_serving(server):
    reply = post(server, "/v1/chat/completions", {"messages": USER})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "It is 4."


def test_chat_completion_shapes(server, fake):
    body = post(server, "/v1/chat/completions", {"model": "fake-r1", "messages": USER}).json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-r1"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "It is 4.",
        "reasoning_content": "Hmm, 2+2.",
    }
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
    # the same prompt rules as `ask`: <think> forced, system folded in, earlier thinking dropped
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "<think>old thoughts</think>old answer"},
        {"role": "user", "content": "second"},
    ]
    post(server, "/v1/chat/completions", {"messages": history})
    text = fake.prompts[-1].text
    assert text.endswith("<｜Assistant｜><think>\n") and fake.prompts[-1].opens_thinking
    assert "Be brief.\n\nfirst" in text and "old answer" in text and "old thoughts" not in text


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        (b"\xff\xfe\x00", 400, ""),
        (json.dumps({"messages": USER, "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": USER, "temperature": [1]}).encode(), 400, "temperature"),
        (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"messages": USER, "model": "../../etc/passwd"}).encode(), 404, "not served here"),
        (json.dumps({"messages": USER, "model": "/models/x.gguf"}).encode(), 404, "not served here"),
        (b"[" * 50_000 + b"]" * 50_000, 400, ""),
    ],
)
def test_bad_requests_get_openai_errors(server, content, status, fragment):
    reply = httpx.post(server.url + "/v1/chat/completions", content=content, timeout=30)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert fragment in error["message"] and error["type"]
    still_serving(server)


def test_ollama_errors_have_ollamas_shape(server):
    reply = httpx.post(server.url + "/api/chat", content=b"{oops", timeout=30)
    assert reply.status_code == 400 and isinstance(reply.json()["error"], str)
    reply = post(server, "/api/chat", {"model": "/etc/passwd", "messages": USER})
    assert reply.status_code == 404 and "not served" in reply.json()["error"]


def test_a_50_mb_body_is_refused_declared_or_chunked(server):
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (50 << 20) + b'"}]}'
    reply = httpx.post(server.url + "/v1/chat/completions", content=big, timeout=60)
    assert reply.status_code == 413

    def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    try:
        reply = httpx.post(server.url + "/v1/chat/completions", content=chunks(), timeout=60)
        assert reply.status_code == 413
    except httpx.TransportError:  # the server may answer and close before the client sent it all
        pass
    still_serving(server)


def test_unknown_routes_and_methods_are_json(server):
    reply = httpx.get(server.url + "/v2/nothing")
    assert reply.status_code == 404 and reply.json()["error"]
    reply = httpx.get(server.url + "/v1/chat/completions")
    assert reply.status_code == 405


def test_api_key(fake):
    with running(fake, "fake-r1", api_key="s3cret") as server:
        assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            reply = post(server, "/v1/chat/completions", {"messages": USER}, headers=headers)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/api/tags").json() == {"error": "missing or wrong API key"}
        ok = post(server, "/v1/chat/completions", {"messages": USER}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(server.url + "/api/tags", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_cors_only_for_the_origins_given(fake):
    origin = {"Origin": "http://localhost:3000"}
    with running(fake, "fake-r1") as server:
        assert "access-control-allow-origin" not in httpx.get(server.url + "/v1/models", headers=origin).headers
    with running(fake, "fake-r1", cors=("http://localhost:3000",)) as server:
        reply = httpx.get(server.url + "/v1/models", headers=origin)
        assert reply.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = httpx.get(server.url + "/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_one_log_line_per_request(fake):
    with running(fake, "fake-r1") as server:
        post(server, "/v1/chat/completions", {"messages": USER})
        post(server, "/v1/chat/completions", {"messages": USER, "model": "nope"})
        lines = server.log_lines(2)
        assert len(lines) == 2, lines
        assert "POST /v1/chat/completions 200" in lines[0] and "completion=7 reasoning=4" in lines[0]
        assert "POST /v1/chat/completions 404" in lines[1]
    with running(fake, "fake-r1", json_logs=True) as server:
        post(server, "/api/chat", {"messages": USER, "stream": False})
        (record,) = [json.loads(line) for line in server.log_lines(1)]
        assert record["path"] == "/api/chat" and record["status"] == 200 and record["reasoning_tokens"] == 4


def test_stop_strings_cut_the_answer_and_the_stream(server):
    reply = post(server, "/v1/chat/completions", {"messages": USER, "stop": ["4"]}).json()
    assert reply["choices"][0]["message"]["content"] == "It is " and reply["choices"][0]["finish_reason"] == "stop"
    lines = post(server, "/api/chat", {"messages": USER, "options": {"stop": ["is"]}}).text.splitlines()
    parts = [json.loads(line) for line in lines]
    assert "".join(p["message"]["content"] for p in parts) == "It "
    assert "".join(p["message"].get("thinking", "") for p in parts) == "Hmm, 2+2."


def test_tokenize_and_show(server):
    assert post(server, "/tokenize", {"content": "one two three"}).json() == {"tokens": [0, 1, 2]}
    show = post(server, "/api/show", {"model": "fake-r1"}).json()
    assert show["model_info"]["localr1.text.reasoning"] is True and "thinking" in show["capabilities"]
    assert httpx.get(server.url + "/api/version").json()["version"]


@pytest.mark.parametrize(
    "path, says",
    [
        ("/api/embed", "makes no embeddings"),
        ("/api/embeddings", "makes no embeddings"),
        ("/v1/embeddings", "makes no embeddings"),
        ("/api/pull", "localr1 pull NAME"),
        ("/api/delete", "localr1 rm NAME"),
        ("/api/create", "localr1 quantize"),
        ("/api/copy", "serves the one model"),
        ("/api/push", "does not upload"),
    ],
)
def test_what_a_reasoning_model_here_cannot_do_is_a_json_error_saying_what_to_run(server, path, says):
    reply = post(server, path, {"model": "fake-r1", "input": "hello", "name": "x"})
    assert reply.status_code == 501
    body = reply.json()
    message = body["error"] if path.startswith("/api/") else body["error"]["message"]
    assert says in message
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "not_supported" and body["error"]["type"] == "server_error"
    assert httpx.request("DELETE", server.url + "/api/delete", json={"model": "x"}, timeout=10).status_code == 501
    still_serving(server)
