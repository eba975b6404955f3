"""Thinking budgets through llama.cpp with the real R1 tokenizer (tiny random-weight model): the forced
"</think>" is R1's own token in the KV cache, the reasoning channel ends, and the answer follows; the
batched engine (serve) does the same per request."""

from __future__ import annotations

import pytest

from localr1.events import Answer, Done, Reasoning
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling
from localr1.text.thinking import MAX_WAITS

pytestmark = pytest.mark.integration

THINK_CLOSE_ID = 151649  # "</think>" in DeepSeek-R1-Distill-Qwen's vocabulary


@pytest.fixture(scope="module")
def tiny(tiny_r1):
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(tiny_r1, n_ctx=2048) as engine:
        yield engine


def _split(events):
    done = events[-1]
    assert isinstance(done, Done)
    forced = [e.text for e in events if isinstance(e, Reasoning) and e.forced]
    model = "".join(e.text for e in events if isinstance(e, Reasoning) and not e.forced)
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    return model, forced, answer, done


def test_budget_ends_the_reasoning_with_r1s_own_token(tiny):
    prompt = render(user_turn("What is 6*7?"), tiny.info.chat_format)
    n_prompt = len(tiny.tokenize(prompt.text, add_bos=prompt.add_bos))
    events = list(tiny.stream(prompt, Sampling(temperature=0, max_tokens=40, think_budget=8)))
    model, forced, answer, done = _split(events)
    report = done.thinking
    assert report.cut and report.model_tokens == 8 and report.waits == 0
    assert len(forced) == 1 and "Considering the limited time" in forced[0]
    assert answer and not done.reasoning_unfinished  # the answer channel opened after the forced </think>
    generated = tiny._cached[n_prompt:]
    assert generated.count(THINK_CLOSE_ID) == 1  # the delimiter, once, as R1's single token
    cut_at = generated.index(THINK_CLOSE_ID)
    assert report.forced_tokens == len(tiny.tokenize(forced[0] + "\n</think>\n\n", add_bos=False))
    assert cut_at == 8 + report.forced_tokens - 2  # 8 of the model's, the transition, then "</think>"
    # the same greedy run without a budget thinks past 8 tokens
    free = list(tiny.stream(prompt, Sampling(temperature=0, max_tokens=40)))
    assert _split(free)[3].usage.reasoning_tokens > 8 and _split(free)[0].startswith(model)


def test_min_thinking_suppresses_r1s_end_token(tiny):
    """The model is pushed to close its thinking at once (a +100 bias on "</think>"): each early close becomes
    "Wait", at most MAX_WAITS times, and then it stands."""
    prompt = render(user_turn("What is 6*7?"), tiny.info.chat_format)
    sampling = Sampling(temperature=0, max_tokens=30, think_min=500, logit_bias={THINK_CLOSE_ID: 100.0})
    model, forced, answer, done = _split(list(tiny.stream(prompt, sampling)))
    assert forced == ["\n\nWait"] * MAX_WAITS or "".join(forced).count("Wait") == MAX_WAITS
    assert done.thinking.waits == MAX_WAITS and not done.thinking.cut
    assert not done.reasoning_unfinished  # the fourth close stood


def test_batched_engine_budgets_per_request(tiny_r1):
    import threading

    from localr1.engine.batching import BatchedEngine
    from localr1.engine.llama_cpp import LlamaCppEngine

    with BatchedEngine(LlamaCppEngine(tiny_r1, n_ctx=2 * 1024, n_seq=2, n_threads=2)) as engine:
        prompt = render(user_turn("What is 6*7?"), engine.info.chat_format)
        results = {}

        def go(name, sampling):
            results[name] = _split(list(engine.stream(prompt, sampling)))

        threads = [
            threading.Thread(target=go, args=("budget", Sampling(temperature=0, max_tokens=40, think_budget=6))),
            threading.Thread(target=go, args=("free", Sampling(temperature=0, max_tokens=40))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        go("alone", Sampling(temperature=0, max_tokens=40, think_budget=6))  # the same request by itself
    model, forced, answer, done = results["budget"]
    assert done.thinking.cut and done.thinking.model_tokens == 6 and len(forced) == 1
    assert answer and not done.reasoning_unfinished and done.usage.prompt_tokens < 40
    assert results["alone"][0] == model and results["alone"][2] == answer  # batching changed nothing
    free_model, free_forced, _, free_done = results["free"]
    assert free_done.thinking is None and not free_forced and free_model.startswith(model)


def test_a_short_eval_with_the_real_model(tiny_r1, tmp_path):
    """eval through llama.cpp: two problems, a budget the random model always reaches, saved and summarised."""
    import json

    from typer.testing import CliRunner

    from localr1.cli.app import app
    from localr1.cli.state import state

    state.debug = False
    out = tmp_path / "run"
    args = ["eval", str(tiny_r1), "--limit", "2", "--max-tokens", "24", "--think-budget", "6", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    (r,) = json.loads(result.stdout)["results"]
    assert r["budget"] == 6 and r["samples"] == 2 and r["cut"] == 1.0 and r["thinking_tokens"] == 6
    assert r["pass_at_1"] == 0.0  # random weights box nothing
    lines = (out / "samples.jsonl").read_text().splitlines()
    meta = json.loads(lines[0])["meta"]
    assert meta["quant"] == "F16" and meta["llama_cpp_python"] and meta["hardware"]["cores"] >= 1
    assert [json.loads(line)["problem"] for line in lines[1:]] == ["arith-1", "arith-2"]


def test_the_policy_lives_in_one_place_and_every_engine_follows_it(tiny, tiny_r1, monkeypatch):
    """engine/generation.py decides what follows each token: changing its texts there changes what the plain,
    the batched and the scripted engine append, and all three count the budget the same way."""
    from localr1.engine import generation
    from localr1.engine.batching import BatchedEngine
    from localr1.engine.fake import FakeEngine
    from localr1.engine.llama_cpp import LlamaCppEngine

    monkeypatch.setattr(generation, "TRANSITION", "\n\nTime is up.\n</think>\n\n")
    monkeypatch.setattr(generation, "WAIT", "\n\nHold on")
    cut = Sampling(temperature=0, max_tokens=40, think_budget=3)
    wait = Sampling(temperature=0, max_tokens=30, think_min=500, logit_bias={THINK_CLOSE_ID: 100.0})
    prompt = render(user_turn("What is 6*7?"), tiny.info.chat_format)
    fake = FakeEngine([["<think>\n", "a", "b", "c", "d", "</think>", "\n\nIt is 42."], ["</think>"] * 8])
    batched = BatchedEngine(LlamaCppEngine(tiny_r1, n_ctx=2048, n_seq=2, n_threads=2))
    try:
        for engine in (tiny, batched, fake):
            model, forced, answer, done = _split(list(engine.stream(prompt, cut)))
            assert "".join(forced).strip() == "Time is up.", engine  # (the "</think>" closes the reasoning)
            assert done.thinking.cut and done.thinking.model_tokens == 3, engine
            model, forced, answer, done = _split(list(engine.stream(prompt, wait)))
            assert "".join(forced).count("Hold on") == MAX_WAITS == done.thinking.waits, engine
    finally:
        batched.close()
