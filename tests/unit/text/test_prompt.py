"""Prompt building with the real R1 chat template (from the 7B GGUF header) and DeepSeek's conventions."""

from __future__ import annotations

import pytest

from localr1.errors import TemplateError
from localr1.text.prompt import MATH_INSTRUCTION, Message, chat_format_for, render, user_turn

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"


@pytest.fixture
def r1(r1_template):
    return chat_format_for(r1_template, bos_token=BOS, eos_token=EOS, add_bos=True, name="DeepSeek R1 Distill Qwen 7B")


def test_r1_format_is_detected(r1):
    assert r1.reasoning and r1.source == "gguf"


def test_single_turn_forces_thinking_once(r1):
    prompt = render(user_turn("What is 2+2?"), r1)
    # BOS is left to the tokenizer (add_bos), so the text does not carry it twice
    assert prompt.text == "<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    assert prompt.opens_thinking and prompt.add_bos


def test_bos_kept_in_text_when_tokenizer_does_not_add_it(r1_template):
    fmt = chat_format_for(r1_template, bos_token=BOS, eos_token=EOS, add_bos=False, name="R1")
    assert render(user_turn("hi"), fmt).text == f"{BOS}<｜User｜>hi<｜Assistant｜><think>\n"


def test_system_text_is_folded_into_the_user_turn(r1):
    prompt = render(user_turn("Prove it.", system="Answer in French."), r1)
    assert prompt.text == "<｜User｜>Answer in French.\n\nProve it.<｜Assistant｜><think>\n"


def test_math_instruction(r1):
    prompt = render(user_turn("What is 3^5 mod 7?", math=True), r1)
    assert f"What is 3^5 mod 7?\n{MATH_INSTRUCTION}<｜Assistant｜>" in prompt.text
    assert MATH_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


def test_history_keeps_answers_and_drops_thinking(r1):
    messages = [
        Message("user", "First?"),
        Message("assistant", "One.", reasoning="secret reasoning one"),
        Message("user", "Second?"),
        Message("assistant", "<think>\nsecret reasoning two\n</think>\n\nTwo."),
        Message("user", "Third?"),
    ]
    text = render(messages, r1).text
    assert "secret" not in text
    assert text == (
        f"<｜User｜>First?<｜Assistant｜>One.{EOS}<｜User｜>Second?<｜Assistant｜>Two.{EOS}"
        "<｜User｜>Third?<｜Assistant｜><think>\n"
    )


def test_think_not_added_twice_when_template_adds_it():
    template = (
        "{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
    )
    prompt = render(user_turn("hi"), chat_format_for(template))
    assert prompt.text.count("<think>") == 1 and prompt.opens_thinking


def test_non_reasoning_model_keeps_its_system_prompt_and_gets_no_think():
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fmt = chat_format_for(template, name="SmolLM2 135M")
    assert not fmt.reasoning
    prompt = render(user_turn("hi", system="be nice"), fmt)
    assert (
        prompt.text == "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not prompt.opens_thinking


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("<｜User｜>", "fallback:deepseek-r1"),
        ("<|im_start|>", "fallback:chatml"),
        ("<|start_header_id|>", "fallback:llama3"),
    ],
)
def test_fallback_templates_follow_the_vocabulary(marker, expected):
    fmt = chat_format_for(None, has_token=lambda t: t == marker, bos_token="<s>")
    assert fmt.source == expected
    assert render(user_turn("hello"), fmt).text  # renders


def test_plain_fallback():
    fmt = chat_format_for(None)
    assert fmt.source == "fallback:plain"
    assert render(user_turn("hi"), fmt).text == "User: hi\n\nAssistant: "


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}{{ messages }}",
    ],
)
def test_templates_cannot_leave_the_sandbox(template):
    with pytest.raises(TemplateError):
        render(user_turn("hi"), chat_format_for(template))


def test_broken_templates_are_template_errors():
    with pytest.raises(TemplateError, match="does not parse"):
        render(user_turn("hi"), chat_format_for("{% for %}"))
    with pytest.raises(TemplateError, match="refused"):
        render(user_turn("hi"), chat_format_for("{{ raise_exception('no users allowed') }}"))


def test_prompt_must_end_with_a_user_turn(r1):
    with pytest.raises(TemplateError):
        render([Message("user", "a"), Message("assistant", "b")], r1)


# --- tools: described in the user turn, calls and results in DeepSeek's tokens ---------------------------
def _tool_conversation():
    from localr1.events import ToolCall

    return [
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        Message("tool", '{"temp": 21}', name="get_weather"),
    ]


def test_tools_are_described_in_the_first_user_turn(r1):
    from localr1.text.tools import CALLS_BEGIN, Tool, describe

    tools = [Tool("get_weather", "The weather in a city", {"type": "object"})]
    prompt = render(user_turn("Weather in Paris?", system="Be brief."), r1, tools=tools)
    assert prompt.text == f"<｜User｜>Be brief.\n\n{describe(tools)}\n\nWeather in Paris?<｜Assistant｜><think>\n"
    assert CALLS_BEGIN in prompt.text


def test_calls_and_results_render_through_the_r1_template(r1):
    """The assistant's call ends its block (the template's own tool_calls branch leaves a single call open),
    the result goes in the template's tool-output tokens, and the model thinks again after it."""
    text = render(_tool_conversation(), r1).text
    assert text == (
        "<｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        f'get_weather\n```json\n{{"city": "Paris"}}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>{EOS}'
        '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>'
        "<think>\n"
    )


def test_results_go_in_a_user_turn_where_the_template_has_no_tool_tokens():
    from localr1.text.prompt import FALLBACK_TEMPLATES
    from localr1.text.tools import outputs_text

    fmt = chat_format_for(FALLBACK_TEMPLATES["chatml"], name="chat")
    conversation = [*_tool_conversation(), Message("tool", "second result")]
    text = render(conversation, fmt).text
    results = outputs_text(['{"temp": 21}', "second result"])
    assert f"<|im_start|>user\n{results}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
