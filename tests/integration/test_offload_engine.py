"""Tensor overrides through llama.cpp on a tiny random MoE model (deepseek2 shape, real R1 tokenizer)."""

from __future__ import annotations

import pytest

from localr1.errors import UsageError
from localr1.offload import expert_rule
from localr1.prompt import render, user_turn
from localr1.sampling import Sampling

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_moe():
    import model_factory

    try:
        return model_factory.tiny_moe_path()
    except model_factory.ModelUnavailable as exc:
        pytest.skip(str(exc))


def generate(path, rules):
    from localr1.engine.llama_cpp import LlamaCppEngine

    with LlamaCppEngine(path, n_ctx=512, tensor_overrides=rules) as engine:
        tokens: list[int] = []
        original = engine.token_piece
        engine.token_piece = lambda t: (tokens.append(t), original(t))[1]
        prompt = render(user_turn("Which experts answer?"), engine.info.chat_format)
        list(engine.stream(prompt, Sampling(temperature=0, max_tokens=24)))
        return tokens, dict(engine.placements)


def test_same_tokens_whatever_the_placement_and_llama_cpp_applies_the_rules(tiny_moe):
    plain, none = generate(tiny_moe, ())
    assert none == {}
    experts, placed = generate(tiny_moe, ((expert_rule((1, 2, 3)), "CPU"),))
    assert experts == plain
    assert sorted(placed) == sorted(f"blk.{i}.ffn_{k}_exps.weight" for i in (1, 2, 3) for k in ("up", "down", "gate"))
    assert set(placed.values()) <= {"CPU", "CPU_REPACK"}
    some, placed_some = generate(tiny_moe, ((expert_rule((3,)), "CPU"), (r"attn_kv_a_mqa", "CPU")))
    assert (
        some == plain and "blk.0.attn_kv_a_mqa.weight" in placed_some and "blk.1.ffn_up_exps.weight" not in placed_some
    )


def test_bad_rules_are_clear_errors(tiny_moe):
    with pytest.raises(UsageError, match="not a valid regular expression"):
        generate(tiny_moe, (("blk.(", "CPU"),))
    with pytest.raises(UsageError, match="no device 'CUDA7'"):
        generate(tiny_moe, (("exps", "CUDA7"),))
