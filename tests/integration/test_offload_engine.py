"""Tensor overrides through llama.cpp on a tiny random MoE model (deepseek2 shape, real R1 tokenizer)."""

from __future__ import annotations

import pytest

from localr1.errors import UsageError
from localr1.fit.offload import expert_rule
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_moe():
    import model_factory

    try:
        return model_factory.tiny_moe_path()
    except model_factory.ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tiny_qwen3moe():
    import model_factory

    try:
        return model_factory.tiny_qwen3moe_path()
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


def test_qwen3moe_shape_too(tiny_qwen3moe):
    plain, _ = generate(tiny_qwen3moe, ())
    moved, placed = generate(tiny_qwen3moe, ((expert_rule((0, 2)), "CPU"),))
    assert moved == plain and len(placed) == 6 and all(name.startswith(("blk.0.", "blk.2.")) for name in placed)


def test_bad_rules_are_clear_errors(tiny_moe):
    with pytest.raises(UsageError, match="not a valid regular expression"):
        generate(tiny_moe, (("blk.(", "CPU"),))
    with pytest.raises(UsageError, match="no device 'CUDA7'"):
        generate(tiny_moe, (("exps", "CUDA7"),))


RUN_ENGINE = """
import json, sys
from localr1.engine.llama_cpp import LlamaCppEngine
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling
engine = LlamaCppEngine(sys.argv[1], n_ctx=256, n_batch=64)
tokens = []
piece = engine.token_piece
engine.token_piece = lambda t: (tokens.append(t), piece(t))[1]
list(engine.stream(render(user_turn("hi"), engine.info.chat_format), Sampling(temperature=0, max_tokens=12)))
print(json.dumps(tokens))
"""


def _memory_cgroup(tmp_name: str, limit: int):
    """A memory-limited cgroup (v1 or v2) to run a process in, or None where this machine cannot make one."""
    import os
    from pathlib import Path

    for root, limit_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max"),
    ):
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            continue
        group = root / tmp_name
        try:
            group.mkdir(exist_ok=True)
        except OSError:
            continue
        try:
            (group / limit_file).write_text(str(limit))
            return group
        except OSError:
            group.rmdir()  # made but not limitable (e.g. no memory controller delegated here)
            continue
    return None


def test_a_model_larger_than_the_memory_allowed_still_runs(tmp_path):
    """Disk tier: a 527 MB MoE in a 250 MiB cgroup runs, streaming its experts through the page cache."""
    import json
    import os
    import subprocess
    import sys

    import model_factory

    big = model_factory.big_moe_path()
    limit = 250 << 20
    assert big.stat().st_size > 2 * limit
    script = tmp_path / "run.py"
    script.write_text(RUN_ENGINE)
    free = subprocess.run([sys.executable, str(script), str(big)], capture_output=True, text=True, check=True)
    group = _memory_cgroup(f"localr1-test-{os.getpid()}", limit)
    if group is None:
        pytest.skip("no memory cgroup can be created here (needs root and a writable cgroup filesystem)")
    try:
        cmd = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} {script} {big}"
        limited = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=300)
        usage_file = group / (
            "memory.max_usage_in_bytes" if (group / "memory.max_usage_in_bytes").exists() else "memory.peak"
        )
        peak = int(usage_file.read_text()) if usage_file.exists() else 0
    finally:
        group.rmdir()
    assert limited.returncode == 0, limited.stderr[-500:]
    assert json.loads(limited.stdout) == json.loads(free.stdout)  # the same tokens, with the memory it was given
    assert peak <= limit + (1 << 20)
