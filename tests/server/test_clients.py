"""Real third-party clients (openai, ollama, simonw's llm) against `localr1 serve` with a real model.

The model is tiny and random, so its text is noise; a grammar (llama-server's ``grammar`` extension, sent
by the clients as an extra field) makes it write real R1 tokens where a test needs a reasoning and an
answer: the ``</think>`` token ends the reasoning channel as it does with a trained model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# "Let me think." then the real </think> token (151649), then an answer
GRAMMAR = 'root ::= "Let me think. 你好" <[151649]> "\\n\\nThe answer is 42. Done."'


@pytest.fixture
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_chat_has_reasoning_content_and_usage(openai_client):
    reply = openai_client.chat.completions.create(
        model="tiny-r1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6*7?"}],
        extra_body={"grammar": GRAMMAR},
        seed=1,
    )
    message = reply.choices[0].message
    assert message.content == "The answer is 42. Done."
    assert message.reasoning_content == "Let me think. 你好"  # DeepSeek's field, beside content
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.completion_tokens > usage.completion_tokens_details.reasoning_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_stream_sends_reasoning_then_content(openai_client):
    stream = openai_client.chat.completions.create(
        model="tiny-r1",
        messages=[{"role": "user", "content": "What is 6*7?"}],
        extra_body={"grammar": GRAMMAR},
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, content, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if getattr(delta, "reasoning_content", None):
                assert not content, "reasoning after the answer started"
                reasoning.append(delta.reasoning_content)
            if delta.content:
                content.append(delta.content)
            finish = choice.finish_reason or finish
    assert "".join(reasoning) == "Let me think. 你好"
    assert "".join(content) == "The answer is 42. Done."
    assert finish == "stop" and usage.completion_tokens_details.reasoning_tokens > 0


def test_openai_inline_and_hidden_reasoning(openai_client):
    def ask(fmt):
        return (
            openai_client.chat.completions.create(
                model="tiny-r1",
                messages=[{"role": "user", "content": "q"}],
                extra_body={"grammar": GRAMMAR, "reasoning_format": fmt},
            )
            .choices[0]
            .message
        )

    inline = ask("inline")
    assert inline.content == "<think>\nLet me think. 你好\n</think>\n\nThe answer is 42. Done."
    hidden = ask("hidden")
    assert hidden.content == "The answer is 42. Done." and getattr(hidden, "reasoning_content", None) is None


def test_openai_stop_and_max_tokens(openai_client):
    reply = openai_client.chat.completions.create(
        model="tiny-r1", messages=[{"role": "user", "content": "q"}], extra_body={"grammar": GRAMMAR}, stop=["42"]
    )
    assert reply.choices[0].message.content == "The answer is " and reply.choices[0].finish_reason == "stop"
    reply = openai_client.chat.completions.create(
        model="tiny-r1", messages=[{"role": "user", "content": "q"}], max_completion_tokens=3, seed=3
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_openai_seed_repeats_and_legacy_completions(openai_client):
    def once():
        return (
            openai_client.chat.completions.create(
                model="tiny-r1", messages=[{"role": "user", "content": "Say hi"}], max_tokens=20, seed=11
            )
            .choices[0]
            .message.reasoning_content
        )

    assert once() == once()
    completion = openai_client.completions.create(model="tiny-r1", prompt="Once upon a time", max_tokens=5, seed=2)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    assert [m.id for m in openai_client.models.list()] == ["tiny-r1"]


def test_openai_errors_are_raised_by_the_client(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError, match="not served here"):
        openai_client.chat.completions.create(model="/etc/passwd", messages=[{"role": "user", "content": "q"}])
    with pytest.raises(openai.BadRequestError, match="'n'"):
        openai_client.chat.completions.create(model="tiny-r1", messages=[{"role": "user", "content": "q"}], n=2)
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        openai_client.chat.completions.create(
            model="tiny-r1",
            messages=[{"role": "user", "content": "q"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    with pytest.raises(openai.BadRequestError, match="grammar"):
        openai_client.chat.completions.create(
            model="tiny-r1", messages=[{"role": "user", "content": "q"}], extra_body={"grammar": "root ::= ("}
        )
    with pytest.raises(openai.BadRequestError, match="context"):
        openai_client.chat.completions.create(model="tiny-r1", messages=[{"role": "user", "content": "go " * 3000}])


def test_ollama_client_chat_with_and_without_thinking(server):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=server.url)
    reply = client.chat(
        model="tiny-r1", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 12, "seed": 4}
    )
    assert reply.message.thinking and reply.message.content == ""  # still thinking after 12 tokens
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 12
    hidden = client.chat(
        model="tiny-r1:latest", messages=[{"role": "user", "content": "hi"}], think=False, options={"num_predict": 12}
    )
    assert not hidden.message.thinking
    parts = list(
        client.chat(
            model="tiny-r1", messages=[{"role": "user", "content": "hi"}], stream=True, options={"num_predict": 8}
        )
    )
    assert parts[-1].done and "".join(p.message.thinking or "" for p in parts[:-1])
    assert [m.model for m in client.list().models] == ["tiny-r1"]
    assert "thinking" in client.show("tiny-r1").capabilities
    with pytest.raises(ollama.ResponseError):
        client.chat(model="other", messages=[{"role": "user", "content": "hi"}])


def test_ollama_generate(server):
    ollama = pytest.importorskip("ollama")
    reply = ollama.Client(host=server.url).generate(model="tiny-r1", prompt="hi", options={"num_predict": 6})
    assert reply.done and reply.thinking and reply.eval_count == 6


def test_llm_cli_with_an_openai_compatible_model(server, tmp_path):
    """simonw's `llm`, configured as its docs say for an OpenAI-compatible server (extra-openai-models.yaml)."""
    llm = Path(sys.executable).with_name("llm")
    if not llm.exists():
        pytest.skip("the llm CLI is not installed")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: localr1\n  model_name: tiny-r1\n  api_base: {server.url}/v1\n", encoding="utf-8"
    )
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    for extra in ([], ["--no-stream"]):
        before = len(server.lines)
        cmd = [str(llm), "-m", "localr1", *extra, "-o", "max_tokens", "8", "-o", "seed", "1", "--no-log", "hello"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        # the tiny model is still thinking after 8 tokens: llm prints the answer channel only, which is empty
        # (the thinking did not leak into it)
        assert out.stdout.strip() == ""
        logged = server.log_lines(1, since=before)
        lines = [line for line in logged if "/v1/chat/completions" in line]
        assert len(lines) == 1, logged
        assert "POST /v1/chat/completions 200" in lines[0] and "completion=8 reasoning=8" in lines[0], lines


def _answer_model():
    pydantic = pytest.importorskip("pydantic")

    class Answer(pydantic.BaseModel):
        answer: int
        unit: str = pydantic.Field(max_length=12)

    return Answer


def test_openai_structured_output_constrains_the_answer_and_not_the_thinking(openai_client):
    """The random model writes noise, yet its answer after the thinking (cut by a budget) parses, and its
    thinking is not JSON."""
    import json

    Answer = _answer_model()
    schema = {"name": "answer", "schema": Answer.model_json_schema(), "strict": True}
    for stream in (False, True):
        kwargs = dict(
            model="tiny-r1",
            messages=[{"role": "user", "content": "What is 6*7?"}],
            response_format={"type": "json_schema", "json_schema": schema},
            extra_body={"thinking_budget": 16},
            max_tokens=300,
            seed=3,
        )
        if stream:
            parts = list(openai_client.chat.completions.create(stream=True, **kwargs))
            content = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            thinking = "".join(getattr(c.choices[0].delta, "reasoning_content", "") or "" for c in parts if c.choices)
        else:
            message = openai_client.chat.completions.create(**kwargs).choices[0].message
            content, thinking = message.content, message.reasoning_content
        value = Answer.model_validate(json.loads(content))
        assert isinstance(value.answer, int)
        assert thinking and not thinking.lstrip().startswith("{")
    parse = getattr(openai_client.chat.completions, "parse", None) or openai_client.beta.chat.completions.parse
    parsed = parse(
        model="tiny-r1", messages=[{"role": "user", "content": "6*7?"}], response_format=Answer,
        extra_body={"thinking_budget": 16}, max_tokens=300, seed=5,
    ).choices[0].message.parsed  # fmt: skip
    assert isinstance(parsed, Answer)
    json_mode = openai_client.chat.completions.create(
        model="tiny-r1", messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"},
        extra_body={"thinking_budget": 8}, max_tokens=400, seed=1,
    )  # fmt: skip
    if json_mode.choices[0].finish_reason == "stop":  # any JSON object: it may run past max_tokens
        assert isinstance(json.loads(json_mode.choices[0].message.content), dict)


def test_ollama_client_format_schema(server):
    ollama = pytest.importorskip("ollama")
    Answer = _answer_model()
    reply = ollama.Client(host=server.url).chat(
        model="tiny-r1", messages=[{"role": "user", "content": "6*7?"}], format=Answer.model_json_schema(),
        options={"thinking_budget": 16, "num_predict": 300, "seed": 2},
    )  # fmt: skip
    assert Answer.model_validate_json(reply.message.content) and reply.message.thinking
