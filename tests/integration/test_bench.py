"""localr1 bench on real models (no timing asserts: only that it measures what it says)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from localr1.cli.app import app
from localr1.cli.state import state
from localr1.engine import bench
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tiny_r1):
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(tiny_r1, n_ctx=1024) as engine:
        yield engine


@pytest.mark.parametrize("n", [1, 7, 64, 333])
def test_prompt_of_exactly_n_tokens(tiny, n):
    p = bench.prompt_of(tiny, n)
    assert len(tiny.tokenize(p.text, add_bos=p.add_bos)) == n


def test_run_measures_every_repetition(tiny):
    result = bench.run(tiny, n_prompt=48, n_gen=16, reps=3)
    d = result.to_dict()
    assert d["prompt_tokens"] == 48 and d["gen_tokens"] == 16
    assert len(result.decode_tps.values) == 3 and all(v > 0 for v in result.decode_tps.values)
    s = d["decode_tokens_per_s"]
    assert s["min"] <= s["median"] <= s["max"]


def test_run_refuses_what_does_not_fit(tiny):
    from localr1.errors import UsageError

    with pytest.raises(UsageError, match="exceed the context"):
        bench.run(tiny, n_prompt=1000, n_gen=100)


def _fast_greedy_tokens(engine, prompt, sampling) -> list[int]:
    """The tokens the engine's argmax path picks, recorded at the sampler."""
    picked: list[int] = []
    original = engine._greedy

    def recording_greedy(s):
        sample = original(s)

        def recorded(chain, ctx, idx):
            picked.append(sample(chain, ctx, idx))
            return picked[-1]

        return recorded

    engine._greedy = recording_greedy
    try:
        engine.reset()
        list(engine.stream(prompt, sampling))
    finally:
        del engine._greedy
    return picked


def _llama_cpp_greedy_tokens(engine, prompt, n: int, logit_bias: dict[int, float]) -> list[int]:
    """llama_sampler_sample with llama.cpp's own logit-bias and greedy samplers, on the same context."""
    lib = engine._lib
    engine.reset()
    engine.prefill(engine.tokenize(prompt.text, add_bos=prompt.add_bos))
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if logit_bias:
        items = [lib.llama_logit_bias(t, b) for t, b in logit_bias.items()]
        arr = (lib.llama_logit_bias * len(items))(*items)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(engine.n_vocab, len(items), arr))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    reference, buf = [], (lib.llama_token * 1)()
    try:
        for _ in range(n):
            token = lib.llama_sampler_sample(chain, engine._ctx, -1)
            reference.append(token)
            buf[0] = token
            lib.llama_decode(engine._ctx, lib.llama_batch_get_one(buf, 1))
    finally:
        lib.llama_sampler_free(chain)
        engine.reset()
    return reference


def test_fast_greedy_picks_what_llama_cpp_greedy_picks(tiny):
    """The argmax path gives the same tokens as llama.cpp's own greedy sampler."""
    prompt = render(user_turn("Tell me about primes."), tiny.info.chat_format)
    fast = _fast_greedy_tokens(tiny, prompt, Sampling(temperature=0, max_tokens=40))
    assert len(fast) == 40 and len(set(fast)) > 1
    assert fast == _llama_cpp_greedy_tokens(tiny, prompt, 40, {})


def test_fast_greedy_applies_biases_and_bans_like_llama_cpp(tiny):
    """Banned tokens (-inf, checked only when the argmax lands on one) and finite biases, as llama.cpp does."""
    prompt = render(user_turn("Tell me about primes."), tiny.info.chat_format)
    free = _fast_greedy_tokens(tiny, prompt, Sampling(temperature=0, max_tokens=20))
    # ban the two tokens the model picks most, push a third up
    counts = sorted(set(free), key=free.count, reverse=True)
    bias = {counts[0]: float("-inf"), counts[1]: float("-inf"), 1000: 3.0}
    fast = _fast_greedy_tokens(tiny, prompt, Sampling(temperature=0, max_tokens=20, logit_bias=bias))
    assert counts[0] not in fast and counts[1] not in fast and fast != free
    assert fast == _llama_cpp_greedy_tokens(tiny, prompt, 20, bias)


def test_bench_command_json(tiny_r1):
    """By default bench samples as ask does, and says so; --greedy measures argmax decoding."""
    state.debug = False
    args = ["bench", str(tiny_r1), "--prompt", "32", "--gen", "8", "--reps", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompt_tokens"] == 32 and out["gen_tokens"] == 8 and out["sampling"] == "r1"
    assert out["decode_tokens_per_s"]["median"] > 0 and "hardware" in out
    assert out["sample_ms_per_token"]["median"] > 0
    greedy = json.loads(CliRunner().invoke(app, [*args, "--greedy"]).stdout)
    assert greedy["sampling"] == "greedy" and greedy["sample_ms_per_token"]["median"] > 0


def test_bench_text_states_the_sampling(tiny_r1):
    state.debug = False
    result = CliRunner().invoke(app, ["bench", str(tiny_r1), "--prompt", "16", "--gen", "4", "--reps", "1"])
    assert result.exit_code == 0, result.output
    assert "R1 sampling (temperature 0.6, top-p 0.95)" in result.stdout and "sampling ms/token" in result.stdout


def test_run_samples_like_ask_by_default(tiny):
    """bench.run with no sampling given goes through localr1.engine.nucleus, as ask does, and times it."""
    calls = []
    original = tiny._nucleus

    def recording(sampling):
        calls.append(sampling)
        return original(sampling)

    tiny._nucleus = recording
    try:
        result = bench.run(tiny, n_prompt=16, n_gen=8, reps=1)
    finally:
        del tiny._nucleus
    assert calls and calls[0].temperature == 0.6 and calls[0].top_p == 0.95
    assert result.sample_ms.values[0] > 0


def test_compare_with_a_missing_llama_bench_is_one_line(tiny_r1):
    state.debug = False
    args = ["bench", str(tiny_r1), "--prompt", "16", "--gen", "4", "--reps", "1", "--compare", "--llama-bench", "/nope"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--llama-bench /nope: no such executable" in result.stderr


FAKE_LLAMA_BENCH = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
decode = "-d" in sys.argv
print(json.dumps([{{"samples_ts": [100.0, 110.0] if decode else [1000.0, 1200.0], "avg_ts": 0}}]))
"""


@pytest.fixture
def fake_llama_bench(tmp_path):
    import sys

    log = tmp_path / "calls.jsonl"
    binary = tmp_path / "llama-bench"
    binary.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable, log=str(log)))
    binary.chmod(0o755)
    return binary, log


def test_compare_takes_turns_with_llama_bench_and_pools_its_runs(tiny_r1, fake_llama_bench):
    binary, log = fake_llama_bench
    state.debug = False
    args = ["bench", str(tiny_r1), "--prompt", "16", "--gen", "4", "--reps", "2", "--rounds", "2", "--compare"]
    result = CliRunner().invoke(app, [*args, "--llama-bench", str(binary), "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 6  # llama-bench 3 times (before, between, after localr1's two turns), pp and tg each
    decode = [c for c in calls if "-d" in c]
    assert all(c[c.index("-d") + 1] == "16" and c[c.index("-n") + 1] == "4" for c in decode)
    assert all(c[c.index("-t") + 1] == "2" and c[c.index("-r") + 1] == "2" for c in calls)
    assert out["llama_bench"]["decode_samples"] == [100.0, 110.0] * 3
    assert out["llama_bench"]["decode_tokens_per_s"] == 105.0 and out["llama_bench"]["prefill_tokens_per_s"] == 1100.0
    assert len(out["decode_tokens_per_s"]) == 3 and out["rounds"] == 2  # localr1's 2 x 2 runs pooled
    assert out["ratio"]["decode"] == round(out["decode_tokens_per_s"]["median"] / 105.0, 3)
    assert out["sampling"] == "r1" and out["llama_bench"]["sampling"].startswith("none")


def test_llama_bench_gets_the_plans_tensor_placement(fake_llama_bench):
    binary, log = fake_llama_bench
    rules = ((r"^blk\.(1|2)\.ffn_(up|down|gate)_exps\.", "CPU"), (r"^output\.", "CPU"))
    out = bench.llama_bench(
        binary, binary, n_prompt=8, n_gen=4, reps=1, threads=1, n_gpu_layers=None, n_batch=8, flash_attn=None,
        overrides=rules, mlock=True,
    )  # fmt: skip
    assert out == {"prefill": [1000.0, 1200.0], "decode": [100.0, 110.0]}
    call = json.loads(log.read_text().splitlines()[0])
    assert call[call.index("-ot") + 1] == r"^blk\.(1|2)\.ffn_(up|down|gate)_exps\.=CPU;^output\.=CPU"
    assert call[call.index("-ngl") + 1] == "999" and call[call.index("-lm") + 1] == "mmap+mlock"
    from localr1.errors import LocalR1Error

    with pytest.raises(LocalR1Error, match="cannot be written as llama-bench -ot"):
        bench.llama_bench(
            binary, binary, n_prompt=8, n_gen=4, reps=1, threads=1, n_gpu_layers=0, n_batch=8, flash_attn=None,
            overrides=((r"^blk\.\d{1,2}\.", "CPU"),),
        )  # fmt: skip
