"""Parallel requests through one batched context: the same tokens as alone, a bounded line, freed slots."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

QUESTIONS = ["What is 2+2?", "Tell me about dragons.", "List three primes.", "Why is the sky blue?"]


def stream_text(url: str, question: str, seed: int, max_tokens: int = 48, barrier=None) -> tuple[str, dict]:
    """The reasoning and answer a streaming chat request gets, and its usage."""
    body = {
        "model": "tiny-r1",
        "messages": [{"role": "user", "content": question}],
        "seed": seed,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if barrier is not None:
        barrier.wait()
    import json

    reasoning, answer, usage = [], [], {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                delta = choice["delta"]
                reasoning.append(delta.get("reasoning_content", ""))
                answer.append(delta.get("content") or "")
    return "".join(reasoning) + "\n---\n" + "".join(answer), usage


def test_concurrent_streams_get_exactly_the_tokens_they_get_alone(server, batched):
    alone = [stream_text(server.url, q, seed) for seed, q in enumerate(QUESTIONS)]
    steps, rows = batched.steps, batched.rows
    barrier = threading.Barrier(len(QUESTIONS))
    results: dict[int, tuple[str, dict]] = {}

    def client(i: int) -> None:
        results[i] = stream_text(server.url, QUESTIONS[i], i, barrier=barrier)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i] for i in range(len(QUESTIONS))] == alone
    # and they really were decoded together: more sequences than llama_decode calls
    assert batched.rows - rows > 1.5 * (batched.steps - steps)


def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _long_request(url: str, seed: int) -> tuple[httpx.Client, httpx.Response]:
    """A streaming request that generates for a long while, open until closed."""
    client = httpx.Client(timeout=120)
    body = {"messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 20000, "seed": seed}
    request = client.build_request("POST", url + "/v1/chat/completions", json=body)
    return client, client.send(request, stream=True)


def test_a_full_line_answers_503_and_a_closed_stream_frees_its_slot_at_once(server, batched):
    queue = server.service.admission.queue
    opened = []
    try:
        for seed in range(batched.slots):  # every slot generating
            opened.append(_long_request(server.url, seed))
        _wait_for(lambda: batched.busy == batched.slots)
        waiting = []
        for seed in range(queue):  # the line fills; their responses start only once they have a slot
            thread = threading.Thread(target=lambda s=seed: opened.append(_long_request(server.url, 100 + s)))
            thread.start()
            waiting.append(thread)
        _wait_for(lambda: _health(server.url)["waiting"] == queue)
        extra = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert extra.status_code == 503 and extra.headers["Retry-After"]
        assert extra.json()["error"]["code"] == "server_busy"
        ollama = httpx.post(server.url + "/api/chat", json={"messages": [{"role": "user", "content": "x"}]})
        assert ollama.status_code == 503 and "busy" in ollama.json()["error"]

        # a client that goes away: its slot goes to the first in line straight away
        client, response = opened.pop(0)
        next(response.iter_lines())
        response.close()
        client.close()
        started = time.monotonic()
        _wait_for(lambda: _health(server.url)["waiting"] == queue - 1, timeout=5)
        assert time.monotonic() - started < 2.0
        assert batched.busy == batched.slots
    finally:
        for client, response in opened:
            response.close()
            client.close()
        for thread in waiting:
            thread.join(30)
        for client, response in opened:
            response.close()
            client.close()
    _wait_for(lambda: batched.busy == 0 and _health(server.url)["waiting"] == 0)


def test_a_non_streaming_client_that_leaves_frees_its_slot(server, batched):
    import socket

    body = b'{"messages": [{"role": "user", "content": "go"}], "max_tokens": 20000}'
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    _wait_for(lambda: batched.busy == 1)
    sock.close()
    _wait_for(lambda: batched.busy == 0, timeout=5)
