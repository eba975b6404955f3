"""The OpenAI and Ollama request bodies: what is accepted, what is refused, and with which message."""

from __future__ import annotations

import math

import pytest

from localr1.server import protocol
from localr1.server.protocol import RequestError

USER = [{"role": "user", "content": "hi"}]


def chat(**body):
    return protocol.openai_chat({"messages": USER, **body})


def refused(func, body, param=None, status=400):
    with pytest.raises(RequestError) as info:
        func(body)
    assert info.value.status == status
    if param is not None:
        assert info.value.param == param, info.value.message
    return info.value.message


def test_defaults_are_deepseeks_advice():
    gen = chat()
    assert (gen.sampling.temperature, gen.sampling.top_p, gen.sampling.max_tokens) == (0.6, 0.95, None)
    assert gen.reasoning == "separate" and not gen.stream and gen.stop == ()


def test_sampling_fields_are_honoured():
    gen = chat(temperature=0, top_p=0.5, top_k=40, min_p=0.05, seed=7, max_completion_tokens=9, stop="###")
    s = gen.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed, s.max_tokens) == (0.0, 0.5, 40, 0.05, 7, 9)
    assert gen.stop == ("###",)
    assert chat(max_tokens=5).sampling.max_tokens == 5
    assert chat(seed=-1).sampling.seed == 2**32 - 1  # OpenAI seeds are 64-bit: folded into llama.cpp's 32
    assert chat(logit_bias={"42": -100, "7": 3}).sampling.logit_bias == {42: -math.inf, 7: 3.0}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stop": ["a"] * 9}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"model": ["a"]}, "model"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"stream_options": {"include_usage": True, "other": 1}}, "stream_options"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking_budget": 0}, "thinking_budget"),
        ({"thinking_budget": "many"}, "thinking_budget"),
        ({"thinking_budget": 10, "thinking_min": 20}, "thinking_min"),
    ],
)
def test_wrong_types_and_ranges_name_the_parameter(body, param):
    refused(protocol.openai_chat, {"messages": USER, **body}, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"tool_choice": "required"}, "tool_choice"),  # with no tools to call
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"made_up_option": 1}, "made_up_option"),
    ],
)
def test_what_localr1_does_not_do_is_refused_not_ignored(body, param):
    message = refused(protocol.openai_chat, {"messages": USER, **body}, param)
    assert param in message


def test_thinking_budgets_per_request():
    """reasoning_effort (OpenAI) and think (Ollama) map to budgets; an explicit thinking_budget wins."""
    assert chat().sampling.think_budget is None
    assert chat(reasoning_effort="low").sampling.think_budget == 1024
    assert chat(reasoning_effort="medium").sampling.think_budget == 4096
    assert chat(reasoning_effort="high").sampling.think_budget is None
    both = chat(reasoning_effort="low", thinking_budget=300, thinking_min=100).sampling
    assert (both.think_budget, both.think_min) == (300, 100)
    gen = protocol.ollama_chat({"messages": USER, "think": "low", "options": {"thinking_min": 50}}, 4096)
    assert (gen.sampling.think_budget, gen.sampling.think_min, gen.reasoning) == (1024, 50, "separate")
    gen = protocol.ollama_chat({"messages": USER, "options": {"thinking_budget": 64}}, 4096)
    assert gen.sampling.think_budget == 64


def test_harmless_values_of_unsupported_fields_pass():
    gen = chat(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0, tool_choice="none", user="me")
    assert gen.sampling.temperature == 0.6
    assert chat(response_format={"type": "text"}, metadata={"a": "b"}, store=False).messages


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hi",
        [{"role": "user"}, "x"],
        [{"role": "robot", "content": "x"}],
        [{"role": "tool", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "assistant", "content": "a"}],  # a prefill needs the user's message before it
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "x"}] * (protocol.MAX_MESSAGES + 1),
    ],
)
def test_bad_messages(messages):
    refused(protocol.openai_chat, {"messages": messages})


def test_messages_keep_roles_and_text_parts():
    gen = protocol.openai_chat(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ]
        }
    )
    assert [(m.role, m.content) for m in gen.messages] == [("system", "Be brief."), ("user", "a\nb")]


def test_reasoning_format():
    assert chat(reasoning_format="inline").reasoning == "inline"
    assert chat(reasoning_format="hidden").reasoning == "hidden"
    refused(protocol.openai_chat, {"messages": USER, "reasoning_format": "xml"}, "reasoning_format")


def test_completion_requests():
    gen = protocol.openai_completion({"prompt": ["text"], "max_tokens": 3})
    assert gen.raw_prompt == "text" and gen.sampling.max_tokens == 3 and gen.reasoning == "inline"
    refused(protocol.openai_completion, {"prompt": ["a", "b"]}, "prompt")
    refused(protocol.openai_completion, {"prompt": "a", "echo": True}, "echo")
    refused(protocol.openai_completion, {"prompt": "a", "messages": USER}, "messages")


def test_ollama_chat():
    gen = protocol.ollama_chat({"model": "r1", "messages": USER, "options": {"num_predict": 5, "seed": 3}}, 4096)
    assert gen.stream and gen.reasoning == "separate" and gen.sampling.max_tokens == 5 and gen.sampling.seed == 3
    assert protocol.ollama_chat({"messages": USER, "think": False}, 4096).reasoning == "hidden"
    assert protocol.ollama_chat({"messages": USER, "options": {"num_predict": -1}}, 4096).sampling.max_tokens is None
    assert protocol.ollama_chat({"messages": USER, "keep_alive": "5m", "options": {"num_gpu": 99}}, 4096)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"format": "yaml"}, "format"),
        ({"format": {"type": "strange"}}, "format"),
        ({"tools": [{}]}, "tools"),
        ({"think": "maybe"}, "think"),
        ({"options": {"num_ctx": 999999}}, "num_ctx"),
        ({"options": {"repeat_penalty": 1.3}}, "repeat_penalty"),
        ({"options": {"temperature": "x"}}, "temperature"),
        ({"options": {"warp": 9}}, "warp"),
        ({"options": []}, "options"),
    ],
)
def test_ollama_refusals(body, fragment):
    with pytest.raises(RequestError) as info:
        protocol.ollama_chat({"messages": USER, **body}, 4096)
    assert fragment in info.value.message


def test_ollama_generate():
    gen = protocol.ollama_generate({"prompt": "why?", "system": "be brief"}, 4096)
    assert [m.role for m in gen.messages] == ["system", "user"] and gen.raw_prompt is None
    raw = protocol.ollama_generate({"prompt": "<｜User｜>x<｜Assistant｜>", "raw": True}, 4096)
    assert raw.raw_prompt.startswith("<｜User｜>") and raw.messages == ()
    with pytest.raises(RequestError):
        protocol.ollama_generate({"prompt": "  "}, 4096)


@pytest.mark.parametrize(
    "body", [b"{", b"[1, 2]", b"\xff\xfe", b"null", b"[" * 100_000 + b"]" * 100_000, b'{"a": 1e999999}']
)
def test_bad_json_is_a_request_error(body):
    try:
        value = protocol.parse_json(body)
    except RequestError as exc:
        assert exc.status == 400
    else:  # a huge exponent parses (to inf): the field readers refuse it
        with pytest.raises(RequestError):
            protocol.openai_chat({"messages": USER, "temperature": value["a"]})


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_structured_output_is_a_grammar_for_the_answer_only():
    """response_format and Ollama's format become Sampling.answer_grammar: the thinking stays free."""
    json_mode = chat(response_format={"type": "json_object"}).sampling
    assert json_mode.answer_grammar and json_mode.grammar is None and "object" in json_mode.answer_grammar
    strict = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}
    )
    assert '"\\"answer\\""' in strict.sampling.answer_grammar  # the key, quoted, in the GBNF
    ollama = protocol.ollama_chat({"messages": USER, "format": SCHEMA}, 4096).sampling
    assert ollama.answer_grammar == strict.sampling.answer_grammar
    assert (
        protocol.ollama_chat({"messages": USER, "format": "json"}, 4096).sampling.answer_grammar
        == json_mode.answer_grammar
    )


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"type": "json_schema"}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}, "not supported"),
        (
            {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object", "properties": {"x": {"type": "weird"}}}},
            },
            "not supported",
        ),
        ({"type": "json_schema", "json_schema": {"schema": {"a": "x" * (70 << 10)}}}, "larger than"),
        (None, None),
    ],
)
def test_a_schema_the_converter_cannot_take_is_a_400_naming_it(value, fragment):
    if fragment is None:  # deeply nested: built here
        deep: dict = {"type": "object"}
        for _ in range(40):
            deep = {"type": "array", "items": deep}
        value = {"type": "json_schema", "json_schema": {"schema": deep}}
        fragment = "nests deeper"
    with pytest.raises(RequestError) as info:
        protocol.openai_chat({"messages": USER, "response_format": value})
    assert info.value.status == 400 and info.value.param.startswith("response_format")
    assert fragment in info.value.message and "\n" not in info.value.message


def test_a_grammar_and_a_schema_together_are_refused():
    body = {"messages": USER, "grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}
    refused(protocol.openai_chat, body, "response_format")


# --- tools ---------------------------------------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
OTHER = {"type": "function", "function": {"name": "get_time"}}


def test_tool_choice_decides_what_is_described_and_constrained():
    auto = chat(tools=[TOOL, OTHER])
    assert auto.tool_choice == "auto" and [t.name for t in auto.tools] == ["get_weather", "get_time"]
    assert auto.sampling.answer_grammar is None  # the model decides
    none = chat(tools=[TOOL], tool_choice="none")
    assert none.tools == () and none.tool_choice == "none" and none.sampling.answer_grammar is None
    required = chat(tools=[TOOL, OTHER], tool_choice="required")
    grammar = required.sampling.answer_grammar
    assert required.parallel_tool_calls and "get_weather" in grammar and "get_time" in grammar
    named = chat(tools=[TOOL, OTHER], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.tool_choice == "required" and not named.parallel_tool_calls
    assert "get_time" in named.sampling.answer_grammar and "get_weather" not in named.sampling.answer_grammar
    assert [t.name for t in named.tools] == ["get_weather", "get_time"]  # all described, one allowed
    # auto with a response format: a call, or the format's JSON
    both = chat(tools=[TOOL], response_format={"type": "json_object"})
    assert "<｜tool▁calls▁begin｜>" in both.sampling.answer_grammar and "answer ::=" in both.sampling.answer_grammar
    assert chat(tools=[TOOL], parallel_tool_calls=False).parallel_tool_calls is False


def test_history_calls_and_results_are_read_in_both_shapes():
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    gen = chat(messages=[*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_9", "content": "rain"}])  # fmt: skip
    assistant, result = gen.messages[1:]
    assert assistant.tool_calls[0].arguments == '{"city": "Oslo"}' and assistant.content == ""
    assert result.role == "tool" and result.content == "rain"
    ollama_call = {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    gen = protocol.ollama_chat(
        {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": [ollama_call]},
                      {"role": "tool", "content": "rain", "tool_name": "get_weather"}], "tools": [TOOL]}, 4096,
    )  # fmt: skip
    assert gen.messages[1].tool_calls[0].arguments == '{"city": "Oslo"}' and gen.messages[2].name == "get_weather"
    assert gen.tool_choice == "auto" and gen.tools[0].name == "get_weather"


def test_the_schema_grammar_refuses_raw_control_characters_in_strings():
    """llama-cpp-python's converter let a newline into a JSON string; json.loads then refused the reply."""
    from localr1.engine.structured import schema_grammar, tool_call_grammar
    from localr1.text.tools import Tool

    for grammar in (
        schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}}),
        tool_call_grammar([Tool("f", "", {"type": "object", "properties": {"a": {"type": "string"}}})]),
    ):
        [char] = [line for line in grammar.splitlines() if line.startswith("char ::=")]
        assert "\\x00-\\x1F" in char
