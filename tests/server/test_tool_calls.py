"""Tool calls through `localr1 serve`, with clients nobody here wrote (openai, ollama, simonw's llm).

Two models: the tiny R1 model (random weights), whose call is valid anyway where one is required, because
the answer after its thinking (cut by a budget) is constrained to a call of the named function with
arguments that follow its schema; and a scripted engine with the real R1 template, which writes a call in
DeepSeek's tokens as a trained model does, so a client's whole loop (call, run the tool, send its result,
read the answer) runs, and the prompts it leads to can be read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from localr1.engine.fake import FakeEngine, fake_model_info
from localr1.text.prompt import chat_format_for
from localr1.text.tools import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, OUTPUT_BEGIN, SEP

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client, **kwargs):
    args = dict(
        model="tiny-r1",
        messages=[{"role": "user", "content": "What's the weather in Paris for 3 days?"}],
        tools=[WEATHER, TIME],
        extra_body={"thinking_budget": 12},
        max_tokens=400,
        seed=7,
    )
    return client.chat.completions.create(**{**args, **kwargs})


def _check_weather(call):
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days"} and isinstance(args["city"], str) and isinstance(args["days"], int)


def test_openai_named_tool_call_is_valid_from_a_random_model(openai_client):
    reply = _ask(openai_client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    _check_weather(call)
    thinking = choice.message.reasoning_content
    assert thinking and CALLS_BEGIN not in thinking  # the thinking stayed free: noise, not a call


def test_openai_required_streams_the_call_as_deltas(openai_client):
    openai = pytest.importorskip("openai")
    stream = _ask(openai_client, tool_choice="required", parallel_tool_calls=False, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    [call] = calls.values()
    assert call["name"] in ("get_weather", "get_time") and isinstance(json.loads(call["arguments"]), dict)
    # and the openai client's own accumulation of a stream agrees
    with openai_client.chat.completions.stream(
        model="tiny-r1", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=False, extra_body={"thinking_budget": 12}, max_tokens=400,
        seed=8,
    ) as events:  # fmt: skip
        final = events.get_final_completion()
    assert isinstance(final, openai.types.chat.ParsedChatCompletion)
    _check_weather(final.choices[0].message.tool_calls[0])


def test_openai_tool_results_come_back_through_the_template(openai_client):
    """The client sends the call and its result back; the server renders them and the model goes on."""
    reply = _ask(openai_client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = reply.choices[0].message.tool_calls[0]
    follow = openai_client.chat.completions.create(
        model="tiny-r1",
        messages=[
            {"role": "user", "content": "What's the weather in Paris for 3 days?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sun"}'},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=6,
        seed=1,
    )
    assert follow.choices[0].finish_reason == "length" and follow.usage.completion_tokens == 6


def test_openai_tool_errors_are_the_clients_errors(openai_client):
    import openai

    bad = [
        dict(tool_choice={"type": "function", "function": {"name": "nope"}}),
        dict(tools=[{"type": "function", "function": {"name": "bad name"}}]),
        dict(tools=[WEATHER, WEATHER]),
        dict(
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "$ref": "#/x"}}}],
            tool_choice="required",
        ),  # fmt: skip
    ]
    for kwargs in bad:
        with pytest.raises(openai.BadRequestError):
            _ask(openai_client, **kwargs)
    assert _ask(openai_client, max_tokens=2).choices[0].finish_reason == "length"  # still serving


# --- a scripted model with the real R1 template ----------------------------------------------------------
def _call(name: str, arguments: dict) -> str:
    return f"{CALL_BEGIN}function{SEP}{name}\n```json\n{json.dumps(arguments)}\n```{CALL_END}"


@pytest.fixture
def scripted(r1_template):
    def start(*scripts):
        from servers import running

        info = fake_model_info("scripted-r1")
        fmt = chat_format_for(r1_template, bos_token="<｜begin▁of▁sentence｜>", add_bos=True, name="R1")
        engine = FakeEngine([list(s) for s in scripts], info=replace(info, chat_format=fmt))
        return engine, running(engine, "scripted-r1")

    return start


@pytest.fixture
def llm() -> Path:
    path = Path(sys.executable).with_name("llm")
    if not path.exists():
        pytest.skip("the llm CLI is not installed")
    return path


def _run_llm(llm: Path, server, folder: Path, supports: str, *args: str) -> subprocess.CompletedProcess:
    """simonw's `llm` against the server, configured as its docs say for an OpenAI-compatible one."""
    (folder / "extra-openai-models.yaml").write_text(
        f"- model_id: localr1\n  model_name: scripted-r1\n  api_base: {server.url}/v1\n  {supports}: true\n",
        encoding="utf-8",
    )
    env = {**os.environ, "LLM_USER_PATH": str(folder), "OPENAI_API_KEY": "unused"}
    cmd = [str(llm), "-m", "localr1", *args, "--no-log"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_llm_cli_runs_a_tool_and_answers_with_its_result(scripted, llm, tmp_path):
    """`llm -T llm_version`: the call is parsed, llm runs the tool and sends its result, and the result
    reaches the prompt in the template's tool-output tokens."""
    engine, server_cm = scripted(
        ["<think>\n", "I should ask the tool.", "</think>", "\n\n", CALLS_BEGIN, _call("llm_version", {}), CALLS_END],
        ["<think>\n", "The tool said it.", "</think>", "\n\n", "It is the version the tool gave."],
    )
    with server_cm as server:
        out = _run_llm(llm, server, tmp_path, "supports_tools", "-T", "llm_version", "Which llm version is this?")
    assert out.returncode == 0, out.stderr
    assert "It is the version the tool gave." in out.stdout
    first, second = (p.text for p in engine.prompts)
    assert "### llm_version" in first and CALLS_BEGIN in first  # the tool, described in DeepSeek's format
    version = subprocess.run([str(llm), "--version"], capture_output=True, text=True).stdout.split()[-1]
    assert f"{OUTPUT_BEGIN}{version}" in second and CALLS_END in second


def test_llm_cli_schema_reaches_the_answer_grammar(scripted, llm, tmp_path):
    engine, server_cm = scripted(["<think>\n", "Hmm.", "</think>", "\n\n", '{"answer": 42}'])
    with server_cm as server:
        out = _run_llm(llm, server, tmp_path, "supports_schema", "--schema", "answer int", "What is 6*7?")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"answer": 42}
    [sampling] = engine.samplings
    assert sampling.answer_grammar and "answer" in sampling.answer_grammar and not sampling.grammar


def test_ollama_client_tools_and_their_results(scripted):
    ollama = pytest.importorskip("ollama")

    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
          city: the city's name
        """
        return "sunny"

    engine, server_cm = scripted(
        [
            "<think>\n",
            "Call it.",
            "</think>",
            "\n\n",
            f"{CALLS_BEGIN}{_call('get_weather', {'city': 'Paris'})}"
            f"\n{_call('get_weather', {'city': 'Rome'})}{CALLS_END}",
        ],  # fmt: skip
        ["<think>\n", "Both sunny.", "</think>", "\n\n", "Sunny in both."],
    )
    with server_cm as server:
        client = ollama.Client(host=server.url)
        messages = [{"role": "user", "content": "Weather in Paris and Rome?"}]
        reply = client.chat(model="scripted-r1", messages=messages, tools=[get_weather])
        calls = reply.message.tool_calls
        assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Rome"}),
        ]
        assert reply.message.content == "" and reply.message.thinking == "Call it."
        messages.append(reply.message)
        for call in calls:
            messages.append(
                {"role": "tool", "content": get_weather(**call.function.arguments), "tool_name": "get_weather"}
            )
        final = client.chat(model="scripted-r1", messages=messages, tools=[get_weather], stream=True)
        assert "".join(part.message.content for part in final) == "Sunny in both."
        assert "tools" in client.show("scripted-r1").capabilities
    second = engine.prompts[1].text
    assert second.count(OUTPUT_BEGIN) == 2 and '"city": "Rome"' in second
