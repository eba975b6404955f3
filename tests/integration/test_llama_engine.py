"""Real models through llama.cpp: SmolLM2-135M and a tiny random model with the real R1 tokenizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from localr1.cli.app import app
from localr1.cli.state import state
from localr1.events import Answer, Done, Reasoning
from localr1.text.prompt import render, user_turn
from localr1.text.reasoning import split_text
from localr1.text.sampling import Sampling

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol(smollm2):
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(smollm2, n_ctx=1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny(tiny_r1):
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(tiny_r1, n_ctx=2048) as engine:
        yield engine


def _texts(events):
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    return reasoning, answer, events[-1]


def test_smollm2_generates_a_plain_answer(smol):
    assert not smol.info.chat_format.reasoning
    assert smol.info.architecture == "llama" and smol.info.quant == "Q4_1"
    prompt = render(user_turn("What is 2+2?"), smol.info.chat_format)
    events = list(smol.stream(prompt, Sampling(temperature=0, max_tokens=24)))
    reasoning, answer, done = _texts(events)
    assert reasoning == "" and answer.strip()
    assert isinstance(done, Done) and done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens == len(smol.tokenize(prompt.text, add_bos=prompt.add_bos))
    assert 0 < done.usage.completion_tokens <= 24 and done.usage.reasoning_tokens == 0
    assert done.timings.decode_tps > 0 and done.timings.prefill_tps > 0
    # llama.cpp's own counters are read back for the same run
    assert done.timings.llama_decode_calls >= done.usage.completion_tokens - 1


def test_greedy_is_repeatable_and_the_prefix_cache_changes_nothing(smol, monkeypatch):
    prompt = render(user_turn("Name three colours."), smol.info.chat_format)
    first = _texts(list(smol.stream(prompt, Sampling(temperature=0, max_tokens=20))))[1]
    decoded: list[int] = []
    prefill = smol.prefill
    monkeypatch.setattr(smol, "prefill", lambda tokens: decoded.append(prefill(tokens)) or decoded[-1])
    second_events = list(smol.stream(prompt, Sampling(temperature=0, max_tokens=20)))
    assert _texts(second_events)[1] == first
    # the second run reused the cached prompt: only the last prompt token was decoded again (counted, not
    # timed: a time bound fails on a loaded machine)
    assert decoded == [1]


def test_seeded_sampling_is_repeatable(smol):
    prompt = render(user_turn("Tell me a story."), smol.info.chat_format)
    runs = [_texts(list(smol.stream(prompt, Sampling(seed=7, max_tokens=16))))[1] for _ in range(2)]
    assert runs[0] == runs[1]


def test_coalesced_events_carry_the_same_text_and_counts(tiny, monkeypatch):
    """Text handed on once per display frame is the text handed on per token, with the same counts."""
    prompt = render(user_turn("Say something."), tiny.info.chat_format)
    sampling = Sampling(seed=5, max_tokens=60)
    runs = {}
    for interval in (0.0, 3600.0):
        monkeypatch.setattr(tiny, "stream_interval_s", interval)
        tiny.reset()
        events = list(tiny.stream(prompt, sampling))
        runs[interval] = (events, _texts(events))
    per_token, coalesced = runs[0.0], runs[3600.0]
    assert per_token[1][:2] == coalesced[1][:2] and per_token[1][0]
    assert per_token[1][2].usage == coalesced[1][2].usage
    # per token: one event per token (or fewer, for bytes held back); coalesced: the first token at once, then
    # everything else at the end (at most one event per channel in each hand-over)
    assert len(per_token[0]) > 20 and len(coalesced[0]) <= 5


def test_max_tokens_and_cancel(smol, monkeypatch):
    monkeypatch.setattr(smol, "stream_interval_s", 0.0)  # one event per token: cancel after the third
    prompt = render(user_turn("Count to one hundred."), smol.info.chat_format)
    done = list(smol.stream(prompt, Sampling(temperature=0, max_tokens=5)))[-1]
    assert done.finish_reason == "length" and done.usage.completion_tokens == 5
    cancel = threading.Event()
    for seen, event in enumerate(smol.stream(prompt, Sampling(temperature=0, max_tokens=200), cancel=cancel), 1):
        if isinstance(event, Done):
            done = event
            break
        if seen == 3:
            cancel.set()
    assert done.finish_reason == "cancelled"
    assert done.usage.completion_tokens <= 4


def test_cancel_during_prompt_processing(smol):
    """A cancel that arrives while llama.cpp reads the prompt aborts the batch (abort callback)."""
    prompt = render(user_turn("Summarise: " + "the quick brown fox " * 150), smol.info.chat_format)
    cancel = threading.Event()
    cancel.set()
    done = list(smol.stream(prompt, Sampling(temperature=0, max_tokens=5), cancel=cancel))[-1]
    assert done.finish_reason == "cancelled" and done.usage.completion_tokens == 0
    n_prompt = len(smol.tokenize(prompt.text, add_bos=prompt.add_bos))
    assert len(smol._cached) < n_prompt  # llama_decode was aborted before the prompt was read
    # the engine's cache bookkeeping survived the abort: the same prompt now runs normally
    again = list(smol.stream(prompt, Sampling(temperature=0, max_tokens=5)))[-1]
    assert again.finish_reason == "length" and again.usage.completion_tokens == 5


def test_unloadable_model_is_a_clear_error(tmp_path):
    from ggufs import write_gguf

    from localr1.engine.llama_cpp import LlamaCppEngine
    from localr1.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="could not load bogus.gguf: .*embedding_length") as exc:
        LlamaCppEngine(write_gguf(tmp_path / "bogus.gguf"))
    assert "does not support" in exc.value.hint


def test_context_overflow_is_a_clear_error(smol):
    from localr1.errors import ContextOverflowError

    prompt = render(user_turn("word " * 2000), smol.info.chat_format)
    with pytest.raises(ContextOverflowError, match="context holds 1,024"):
        list(smol.stream(prompt, Sampling()))


def test_tiny_r1_speaks_the_r1_tokenizer(tiny):
    fmt = tiny.info.chat_format
    assert fmt.reasoning and fmt.source == "gguf" and fmt.bos_token == "<｜begin▁of▁sentence｜>" and fmt.add_bos
    assert tiny.n_vocab == 152064
    prompt = render(user_turn("Prove that sqrt(2) is irrational."), fmt)
    tokens = tiny.tokenize(prompt.text, add_bos=True)
    assert tokens[0] == 151646 and tokens[1] == 151644  # BOS once, then <｜User｜>
    assert tokens[-2:] == [151648, 198]  # "<think>" as one token, then "\n"


def test_real_think_tokens_split_reasoning_from_answer(tiny):
    """A grammar makes the model emit real R1 tokens: multi-byte text, the </think> token, then an answer."""
    grammar = 'root ::= "Let me think. ü 你好 😀" <[151649]> "\\n\\nThe answer is $\\\\boxed{42}$."'
    prompt = render(user_turn("What is 6*7?"), tiny.info.chat_format)
    events = list(tiny.stream(prompt, Sampling(seed=1, max_tokens=60, grammar=grammar)))
    reasoning, answer, done = _texts(events)
    assert reasoning == "Let me think. ü 你好 😀"
    assert answer == "The answer is $\\boxed{42}$."
    assert done.finish_reason == "stop" and not done.reasoning_unfinished
    assert 0 < done.usage.reasoning_tokens < done.usage.completion_tokens
    assert done.timings.thinking_s > 0
    assert all("\ufffd" not in e.text for e in events[:-1])


def test_random_r1_streams_match_the_whole_text(tiny, monkeypatch):
    """Whatever tokens come out, streaming gives what decoding the whole byte string at once gives."""
    pieces: list[bytes] = []

    from localr1.engine import generation

    class Recording(generation.EventAssembler):
        def feed_many(self, run: list[bytes]):
            pieces.extend(run)
            return super().feed_many(run)

    monkeypatch.setattr(generation, "EventAssembler", Recording)
    monkeypatch.setattr(tiny, "stream_interval_s", 0.0)  # each token handed on by itself
    prompt = render(user_turn("Say something."), tiny.info.chat_format)
    for seed in (1, 2, 3):
        pieces.clear()
        events = list(tiny.stream(prompt, Sampling(seed=seed, max_tokens=120)))
        reasoning, answer, done = _texts(events)
        whole = b"".join(pieces).decode("utf-8", errors="replace")
        assert (reasoning, answer) == split_text([whole], opened=True)
        assert done.usage.completion_tokens == len(pieces)
        assert done.reasoning_unfinished == (done.finish_reason == "length" and "</think>" not in whole)


def test_ask_end_to_end_json(tiny_r1):
    state.debug = False
    result = CliRunner().invoke(
        app, ["ask", "hello", "--model", str(tiny_r1), "--max-tokens", "12", "--json", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["usage"]["completion_tokens"] == 12
    assert obj["finish_reason"] == "length"
    assert obj["model"]["quant"] == "F16"


def test_ask_end_to_end_plain(smollm2):
    state.debug = False
    result = CliRunner().invoke(
        app, ["ask", "What is 2+2?", "-m", str(smollm2), "--temperature", "0", "--max-tokens", "20"]
    )
    assert result.exit_code == 0
    assert result.stdout.strip()
    assert result.stdout.endswith("\n")


def test_sigint_stops_generation_cleanly(tiny_r1):
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "localr1", "ask", "go", "-m", str(tiny_r1), "--ctx", "4096", "--show-thinking"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    started = time.perf_counter()
    assert proc.stderr.readline() == "Thinking\n"  # generation is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Stopped." in err
    # the full 4,096-token context would take several seconds more: the stop came from Ctrl-C
    assert time.perf_counter() - started < 30


def test_native_struct_fields_are_checked():
    import llama_cpp.llama_cpp as lib

    from localr1.engine.backend import set_fields
    from localr1.errors import EngineError

    params = set_fields(lib.llama_model_default_params(), n_gpu_layers=3, load_mode=0)
    assert (params.n_gpu_layers, params.load_mode) == (3, 0)
    with pytest.raises(EngineError, match="no llama_model_params.use_mmap"):
        set_fields(lib.llama_model_default_params(), use_mmap=False)


def test_llama_cpp_pythons_own_init_does_not_take_the_log_away(tmp_path):
    """localr1 skips llama-cpp-python's package __init__; when other code runs it later (llama_cpp.Llama),
    its logger replaces localr1's log callback, and the engine puts its own back: errors keep their reason."""
    from ggufs import write_gguf

    bogus = write_gguf(tmp_path / "bogus.gguf")
    script = f"""
import sys
from localr1.engine.llama_cpp import LlamaCppEngine, init_backend
from localr1.errors import ModelLoadError
init_backend()
assert "Llama" not in sys.modules["llama_cpp"].__dict__  # the high-level API was not imported
import llama_cpp
llama_cpp.Llama  # now it is, and its logger sets its callback
try:
    LlamaCppEngine({str(bogus)!r})
except ModelLoadError as exc:
    print(exc.message)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "embedding_length" in proc.stdout


def test_ask_imports_only_what_it_uses(tiny_r1):
    """Time to first token: ask loads llama.cpp's bindings, not llama-cpp-python's high-level API (its chat
    formats, Jinja2 setup), nor the gguf package (NumPy, which the sampler reads the logits with, is
    imported in a thread while the model loads)."""
    code = (
        "import sys\n"
        "from localr1.cli.app import main\n"
        f"try:\n    main(['ask', 'hi', '-m', {str(tiny_r1)!r}, '--max-tokens', '2'])\nexcept SystemExit:\n    pass\n"
        "unused = ('llama_cpp.llama', 'llama_cpp.llama_chat_format', 'gguf', 'textual', 'huggingface_hub')\n"
        "print('LOADED', 'llama_cpp.llama_cpp' in sys.modules, [m for m in unused if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "LOADED True []" in proc.stdout, proc.stdout + proc.stderr


def test_a_thread_pool_is_attached_and_changes_no_token(tiny_r1):
    """The engine gives llama.cpp one CPU thread pool for the context's life (as llama-cli does)."""
    from localr1.engine.llama_cpp import LlamaCppEngine

    outputs = {}
    for pool in (True, False):
        with LlamaCppEngine(tiny_r1, n_ctx=512, n_threads=2, threadpool=pool) as engine:
            assert (engine._threadpool is not None) == pool
            prompt = render(user_turn("Count."), engine.info.chat_format)
            outputs[pool] = _texts(list(engine.stream(prompt, Sampling(temperature=0, max_tokens=30))))[:2]
            assert engine.count_tokens(outputs[pool][0] + outputs[pool][1]) > 0
    assert outputs[True] == outputs[False]


def test_close_from_another_thread_waits_for_the_generation(tiny_r1):
    """A front end quitting mid-reply closes the engine from its own thread: the generation stops (cancelled)
    and only then are the context and the model freed (freeing under a running decode was a segfault)."""
    import threading

    from localr1.engine.llama_cpp import LlamaCppEngine
    from localr1.events import Done

    engine = LlamaCppEngine(tiny_r1, n_ctx=4096, n_threads=2)
    prompt = render(user_turn("Tell me a long story."), engine.info.chat_format)
    events, started = [], threading.Event()

    never_stop = {t: float("-inf") for t in engine.end_tokens()}

    def generate():
        for event in engine.stream(prompt, Sampling(seed=1, logit_bias=never_stop)):
            events.append(event)
            started.set()

    worker = threading.Thread(target=generate)
    worker.start()
    assert started.wait(30)
    engine.close()  # while the worker decodes
    worker.join(30)
    assert not worker.is_alive()
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "cancelled"
    assert engine._ctx is None and engine._model is None
    from localr1.errors import EngineError

    with pytest.raises(EngineError, match="closed"):
        next(engine.stream(prompt, Sampling(seed=1)))


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_each_kv_cache_type_generates(smollm2, tiny_r1, kv_type):
    """--kv-type: a real model runs with each cache type (a quantized V cache turns flash attention on); a
    model whose heads the type's blocks do not divide (the tiny R1's 16) is one line, not a crash."""
    result = CliRunner().invoke(
        app,
        ["ask", "hello", "-m", str(smollm2), "--ctx", "1024", "--max-tokens", "16", "--seed", "2", "--json",
         "--kv-type", kv_type],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout)["usage"]["completion_tokens"] <= 16
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(smollm2, n_ctx=512, kv_type=kv_type) as engine:
        assert engine.kv_type == kv_type
        prompt = render(user_turn("hi"), engine.info.chat_format)
        done = list(engine.stream(prompt, Sampling(temperature=0, max_tokens=8, logit_bias={
            t: float("-inf") for t in engine.end_tokens()})))[-1]  # fmt: skip
        assert done.usage.completion_tokens == 8
    if kv_type != "f16":
        result = CliRunner().invoke(app, ["ask", "hi", "-m", str(tiny_r1), "--ctx", "1024", "--kv-type", kv_type])
        assert result.exit_code == 2 and "cannot keep a" in result.stderr and "--kv-type f16" in result.stderr
