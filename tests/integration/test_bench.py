"""localr1 bench on real models (no timing asserts: only that it measures what it says)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from localr1 import bench
from localr1.cli.app import app, state
from localr1.prompt import render, user_turn
from localr1.sampling import Sampling

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


def test_fast_greedy_picks_what_llama_cpp_greedy_picks(tiny):
    """The argmax path gives the same tokens as llama.cpp's own greedy sampler."""
    prompt = render(user_turn("Tell me about primes."), tiny.info.chat_format)
    fast: list[int] = []
    original = tiny.token_piece

    def piece(token):
        fast.append(token)
        return original(token)

    tiny.token_piece = piece
    try:
        tiny.reset()
        list(tiny.stream(prompt, Sampling(temperature=0, max_tokens=40)))
    finally:
        tiny.token_piece = original
    # reference: llama_sampler_sample with a greedy chain, on the same context
    lib = tiny._lib
    tiny.reset()
    tiny._prefill(tiny.tokenize(prompt.text, add_bos=prompt.add_bos))
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    reference, buf = [], (lib.llama_token * 1)()
    try:
        for _ in range(len(fast)):
            token = lib.llama_sampler_sample(chain, tiny._ctx, -1)
            reference.append(token)
            buf[0] = token
            lib.llama_decode(tiny._ctx, lib.llama_batch_get_one(buf, 1))
    finally:
        lib.llama_sampler_free(chain)
        tiny.reset()
    assert len(fast) == 40 and fast == reference


def test_bench_command_json(tiny_r1):
    state.debug = False
    result = CliRunner().invoke(app, ["bench", str(tiny_r1), "--prompt", "32", "--gen", "8", "--reps", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompt_tokens"] == 32 and out["gen_tokens"] == 8 and out["sampling"] == "greedy"
    assert out["decode_tokens_per_s"]["median"] > 0 and "hardware" in out


def test_compare_with_a_missing_llama_bench_is_one_line(tiny_r1):
    state.debug = False
    args = ["bench", str(tiny_r1), "--prompt", "16", "--gen", "4", "--reps", "1", "--compare", "--llama-bench", "/nope"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--llama-bench /nope: no such executable" in result.stderr
