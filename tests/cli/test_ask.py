"""``localr1 ask`` through Typer's runner, with the scripted engine in place of llama.cpp."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from localr1 import __version__
from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine, fake_model_info

R1_SCRIPT = ["<think>", "\n", "Let me", " think: 2", "+2=4.", "\n", "</think>", "\n\n", "The answer", " is **4**."]


@pytest.fixture
def engine(monkeypatch):
    holder = {}

    def factory(script=R1_SCRIPT, **kwargs):
        eng = FakeEngine([script], **kwargs)
        monkeypatch.setattr(loader_module, "load_engine", lambda path, header, options, cancel=None: eng)
        holder["engine"] = eng
        return eng

    factory(R1_SCRIPT)
    factory.get = lambda: holder["engine"]
    return factory


def test_answer_on_stdout_thinking_hidden(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "What is 2+2?", "--model", str(small_gguf)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "The answer is **4**.\n"
    assert "Let me" not in result.stdout and "Let me" not in result.stderr
    prompt = engine.get().prompts[0]
    assert prompt.text.endswith("What is 2+2?<｜Assistant｜><think>\n") and prompt.opens_thinking
    sampling = engine.get().samplings[0]
    assert (sampling.temperature, sampling.top_p) == (0.6, 0.95)


def test_show_thinking_goes_to_stderr(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "What is 2+2?", "-m", str(small_gguf), "--show-thinking"])
    assert result.exit_code == 0
    assert result.stdout == "The answer is **4**.\n"
    assert "Let me think: 2+2=4." in result.stderr
    assert "</think>" not in result.stderr + result.stdout


def test_json_output(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "What is 2+2?", "-m", str(small_gguf), "--json"])
    assert result.exit_code == 0
    obj = json.loads(result.stdout)
    assert obj["reasoning_content"] == "Let me think: 2+2=4."
    assert obj["content"] == "The answer is **4**."
    assert obj["finish_reason"] == "stop"
    assert obj["usage"]["completion_tokens"] == len(R1_SCRIPT)
    assert obj["usage"]["reasoning_tokens"] == 7  # up to and including </think>
    assert obj["usage"]["prompt_tokens"] > 0
    assert set(obj["timings"]) >= {"thinking_s", "prefill_tokens_per_s", "decode_tokens_per_s"}
    assert obj["model"]["path"] == str(small_gguf)


def test_question_from_stdin(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "-", "-m", str(small_gguf)], input="piped question\n")
    assert result.exit_code == 0
    assert "piped question" in engine.get().prompts[0].text


def test_stats_after_the_answer(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "2+2?", "-m", str(small_gguf), "--stats"])
    assert result.exit_code == 0
    assert result.stdout == "The answer is **4**.\n"  # stdout holds the answer only
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"{small_gguf.name} · 10 tokens \(7 thinking\) at [\d.]+ tokens/s · prompt 1 token in [\d.]+ s"
        r" · loaded in [\d.]+ s",
        last,
    ), last


def test_piped_text_and_a_question_are_asked_together(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "what is missing?", "-m", str(small_gguf)], input="step 1\nstep 3\n")
    assert result.exit_code == 0
    assert "step 1\nstep 3\n\nwhat is missing?" in engine.get().prompts[0].text


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [("devnull", "None"), ("pipe", "'from a pipe'"), ("file", "'from a file\\n'"), ("closed", "None")],
)
def test_only_pipes_and_files_on_stdin_are_read(tmp_path, stdin, expected):
    """A terminal, /dev/null or a closed stdin is not read: reading them would wait, or mean nothing."""
    code = "from localr1.cli.ask import _piped_stdin; print(repr(_piped_stdin()))"
    kwargs: dict = {}
    if stdin == "devnull":
        kwargs["stdin"] = subprocess.DEVNULL
    elif stdin == "pipe":
        kwargs["input"] = "from a pipe"
    elif stdin == "file":
        (tmp_path / "in.txt").write_text("from a file\n")
        kwargs["stdin"] = (tmp_path / "in.txt").open()
    else:
        code = "import os, sys; os.close(0); " + code
        kwargs["stdin"] = subprocess.DEVNULL
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **kwargs)
    assert out.stdout.strip() == expected


def test_system_and_math_go_into_the_user_turn(runner, engine, small_gguf):
    result = runner.invoke(app, ["ask", "3^5 mod 7?", "-m", str(small_gguf), "--system", "Be terse.", "--math"])
    assert result.exit_code == 0
    text = engine.get().prompts[0].text
    assert "Be terse.\n\n3^5 mod 7?\nPlease reason step by step, and put your final answer within \\boxed{}." in text


def test_sampling_options_are_passed(runner, engine, small_gguf):
    args = ["ask", "q", "-m", str(small_gguf), "--temperature", "0.5", "--top-p", "0.9", "--seed", "42"]
    result = runner.invoke(app, [*args, "--max-tokens", "100"])
    assert result.exit_code == 0
    s = engine.get().samplings[0]
    assert (s.temperature, s.top_p, s.seed, s.max_tokens) == (0.5, 0.9, 42, 100)


def test_unfinished_thinking_is_reported(runner, engine, small_gguf):
    engine(["<think>\n", "still", " going", " on"])
    result = runner.invoke(app, ["ask", "q", "-m", str(small_gguf), "--max-tokens", "3"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "still thinking when it reached the token limit (3 tokens)" in result.stderr


def test_utf8_split_across_pieces(runner, engine, small_gguf):
    data = "</think>\n\n√2 ∉ ℚ, 你好".encode()
    engine([data[i : i + 1] for i in range(len(data))])  # one byte per token
    result = runner.invoke(app, ["ask", "q", "-m", str(small_gguf)])
    assert result.stdout == "√2 ∉ ℚ, 你好\n"


def test_ctrl_c_keeps_what_was_printed(runner, engine, small_gguf):
    engine(["</think>", "Partial", " answer", " never finished"], interrupt_after=3)
    result = runner.invoke(app, ["ask", "q", "-m", str(small_gguf)])
    assert result.exit_code == 130
    assert result.stdout.startswith("Partial answer")
    assert "Interrupted" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cancelled_generation_exits_130(runner, engine, small_gguf):
    eng = engine(["</think>", "Partial"], finish_reason="cancelled")
    result = runner.invoke(app, ["ask", "q", "-m", str(small_gguf)])
    assert result.exit_code == 130
    assert result.stdout == "Partial\n"
    assert "Stopped." in result.stderr
    assert eng.closed


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ask", ""], 2, "the question is empty"),
        (["ask", "   \n"], 2, "the question is empty"),
        (["ask", "q", "-m", "/no/such/model.gguf"], 1, "no such file"),
        (["ask", "q", "-m", "r1:99b"], 1, "unknown model 'r1:99b'"),
        (["ask", "q", "-m", "r1:7b"], 1, "r1:7b:Q3_K_M is not downloaded and localr1 is offline"),
        (["ask", "q"], 1, "r1-0528:8b:Q3_K_M (the best fit for this machine) is not downloaded and localr1 is offline"),
        (["ask", "q", "--temperature", "-1"], 2, "temperature -1.0 is out of range"),
        (["ask", "q", "--ctx", "0"], 2, "--ctx must be from 16 to"),
        (["ask", "q", "--max-tokens", "0"], 2, "--max-tokens must be positive, not 0"),
    ],
)
def test_bad_input_is_one_line(runner, engine, args, code, message):
    result = runner.invoke(app, args)
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("Hint: "))
    assert "Traceback" not in result.output


def test_a_model_that_cannot_be_downloaded_is_named(runner, engine, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # HF_ENDPOINT is 127.0.0.1:9, where nothing listens
    result = runner.invoke(app, ["ask", "q"])
    assert result.exit_code == 1
    first, hint = result.stderr.strip().splitlines()
    assert first.startswith("Error: could not download r1-0528:8b:Q3_K_M (the best fit for this machine): ")
    assert "could not reach the Hugging Face Hub at http://127.0.0.1:9" in first
    assert hint.startswith("Hint: Check the connection")


def test_bad_files_are_one_line(runner, engine, tmp_path, small_gguf):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(small_gguf.read_bytes()[:-10])
    for path, message in ((not_gguf, "is not a GGUF file"), (cut, "is truncated")):
        result = runner.invoke(app, ["ask", "q", "-m", str(path)])
        assert result.exit_code == 1
        assert message in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(runner, engine):
    result = runner.invoke(app, ["--debug", "ask", "q", "-m", "/no/such/model.gguf"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "ModelNotFoundError" in result.stderr


def test_version_and_help(runner):
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"localr1 {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "ask" in result.stdout
    result = runner.invoke(app, ["ask", "--help"])
    assert "--show-thinking" in result.stdout and "Examples" in result.stdout


def test_help_imports_no_heavy_libraries():
    code = (
        "import sys\n"
        "from localr1.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'textual', 'huggingface_hub', 'numpy', 'gguf', 'jinja2', 'starlette', 'uvicorn', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_python_dash_m(small_gguf):
    out = subprocess.run([sys.executable, "-m", "localr1", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"localr1 {__version__}"


def test_fake_engine_info_is_reasoning():
    assert fake_model_info().chat_format.reasoning
    assert not fake_model_info(reasoning=False).chat_format.reasoning


def test_thinking_summary_counts_tokens_not_events(monkeypatch):
    """Engines hand on several tokens per event (one per display frame): the spinner and the summary
    count the tokens the events carry."""
    import io

    from localr1.cli import render
    from localr1.events import Answer, Done, Reasoning, Timings, Usage

    ticks = []

    class Spinner:
        def __init__(self, err):
            pass

        def start(self):
            pass

        def tick(self, tokens):
            ticks.append(tokens)

        def stop(self):
            pass

    monkeypatch.setattr(render, "_Spinner", Spinner)
    out, err = io.StringIO(), io.StringIO()
    events = [Reasoning("Let me think", 40), Reasoning(" more.", 25), Answer("4", 3)]
    events.append(Done("stop", Usage(5, 68, 66), Timings()))
    render.TerminalRenderer(out=out, err=err, spinner=True).render(events)
    assert ticks == [40, 65]
    assert out.getvalue() == "4\n"
    assert err.getvalue().startswith("Thought for ") and err.getvalue().endswith(" s (65 tokens)\n")


def test_think_budget_cuts_and_json_says_so(runner, engine, small_gguf):
    engine(["<think>", "\n", "one", " two", " three", " four", "</think>", "\n\n", "Four."])
    args = ["ask", "Count.", "-m", str(small_gguf), "--think-budget", "2"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["thinking_budget"] == {"budget": 2, "min": None, "model_tokens": 2, "cut": True, "waits": 0,
                                      "forced_tokens": 3}  # fmt: skip
    assert obj["content"] == "Four." and "three" not in obj["reasoning_content"]
    assert engine.get().samplings[0].think_budget == 2
    engine(["<think>", "\n", "one", " two", " three", "</think>", "\n\n", "Four."])
    shown = runner.invoke(app, [*args, "--show-thinking"])
    assert "[budget] Considering the limited time, I have to give the solution now." in shown.stderr
    assert shown.stdout == "Four.\n"
    bad = runner.invoke(app, [*args[:-1], "5", "--think-min", "9"])
    assert bad.exit_code == 2 and "--think-min (9) is larger than --think-budget (5)" in bad.stderr
