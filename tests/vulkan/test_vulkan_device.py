"""localr1's GPU code paths on a real ggml device: llama.cpp's Vulkan backend on Mesa's lavapipe.

lavapipe runs on the CPU, so its speed means nothing, but its buffers, placements, allocation failures and
per-device accounting are llama.cpp's own. One quirk matters for the figures: lavapipe's storage buffers
hold at most 128 MiB (real GPUs: 2-4 GiB), and llama.cpp runs an op whose tensors are larger than that on
the CPU (the logits of a 512-token micro-batch of R1's 152k vocabulary are 297 MiB): the checks below keep
their tensors under it (a smaller micro-batch, SmolLM2's vocabulary) so that they measure what a real GPU
would hold.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from child import generate

from localr1.fit.arch import Architecture
from localr1.fit.memory import WeightLayout, estimate
from localr1.fit.offload import expert_rule
from localr1.models.gguf_info import read_gguf
from localr1.units import MiB

PROMPT = "Why is the sky blue?"


def _close(ours: float, theirs: float, tolerance: float = 0.03, absolute: float = 1.0) -> bool:
    return abs(ours - theirs) <= tolerance * theirs + absolute


def _layout(path):
    info = read_gguf(path)
    arch = Architecture.from_gguf(info.metadata)
    return arch, WeightLayout.from_gguf(info.tensors, arch.n_layer)


def test_hw_and_doctor_see_the_device_and_plan_for_it(vulkan, smollm2):
    hw = vulkan.localr1("hw", "--json")
    assert hw.returncode == 0, hw.stderr
    machine = json.loads(hw.stdout)
    assert "Vulkan0" in machine["backends"]
    (gpu,) = machine["gpus"]
    assert gpu["vendor"] == "vulkan" and "llvmpipe" in gpu["name"] and gpu["total"] > 0
    doctor = vulkan.localr1("doctor", "--json")
    report = json.loads(doctor.stdout)
    assert "vulkan" in report["llama_cpp"]["backends"] and "Vulkan0" in [
        d["name"] for d in report["llama_cpp"]["devices"]
    ]
    assert report["gpus"][0]["usable"] is True
    assert not any("sits idle" in p["message"] for p in report["problems"])
    # the planner treats the device's memory as VRAM, capped by the simulation flags
    plan = vulkan.localr1("plan", str(smollm2), "--ctx", "2048", "--json")
    assert json.loads(plan.stdout)["n_gpu_layers"] == -1, plan.stderr
    # 780 MiB less the 5% margin and the 600 MiB kept for the driver: ~140 MiB, some of SmolLM2's 30 layers
    capped = vulkan.localr1("plan", str(smollm2), "--ctx", "2048", "--json", LOCALR1_HW="gpu=detected,vram=780MiB")
    layers = json.loads(capped.stdout)["n_gpu_layers"]
    assert 0 < layers < 31, capped.stdout


def test_partial_offload_places_llama_cpps_layers_and_gives_the_cpu_tokens(vulkan, smollm2):
    """--gpu-layers 10 of 30: llama.cpp puts the output layer and the last 9 layers on the device (the output
    counts as a layer), and greedy decoding gives the CPU build's tokens."""
    cpu = generate(str(smollm2), 0, 2048, [], PROMPT, 24)
    assert set(cpu["layers"].values()) == {"CPU"}
    for n_gpu_layers in (10, -1):
        run = vulkan.child("generate", path=str(smollm2), n_gpu_layers=n_gpu_layers, n_ctx=2048, rules=[],
                           prompt=PROMPT, max_tokens=24)  # fmt: skip
        on_device = {int(i) for i, d in run["layers"].items() if d == "Vulkan0"}
        # "layer 30" is the output layer
        assert on_device == (set(range(21, 31)) if n_gpu_layers == 10 else set(range(31))), run["layers"]
        assert run["tokens"] == cpu["tokens"]


@pytest.mark.parametrize("n_ctx", [2048, 8192])
@pytest.mark.parametrize("flash_attn", [True, False])
def test_per_device_memory_matches_the_planner(vulkan, smollm2, n_ctx, flash_attn):
    """Weights, KV cache and compute buffers per device, as llama.cpp allocates them for real, against the
    planner's per-device figures (memory.estimate), at two contexts."""
    if not flash_attn and n_ctx > 4096:
        pytest.skip("without flash attention the 8k scores (144 MiB) exceed lavapipe's 128 MiB buffers")
    arch, weights = _layout(smollm2)
    for n_gpu_layers in (10, -1):
        run = vulkan.child("generate", path=str(smollm2), n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, rules=[],
                           prompt="Hi", max_tokens=1, flash_attn=flash_attn)  # fmt: skip
        b = run["buffers"]
        est = estimate(arch, weights, n_ctx, n_gpu_layers, flash_attn=flash_attn)
        host_weights = sum(v for k, v in b.items() if k.startswith("model:") and k != "model:Vulkan0")
        assert _close(est.gpu_weights / MiB, b["model:Vulkan0"]), (n_gpu_layers, est, b)
        assert _close(est.cpu_weights / MiB, host_weights), (n_gpu_layers, est, b)
        assert _close(est.gpu_kv / MiB, b["kv:Vulkan0"]), (n_gpu_layers, est, b)
        assert _close(est.cpu_kv / MiB, b.get("kv:CPU", 0.0)), (n_gpu_layers, est, b)
        assert _close(est.cpu_compute / MiB, b["compute:Vulkan_Host"]), (n_gpu_layers, est, b)
        if n_gpu_layers < 0:
            assert _close(est.gpu_compute / MiB, b["compute:Vulkan0"]), (n_gpu_layers, est, b)
        else:  # partial offload: room for CPU layers' weights copied in for a prompt (op offload)
            assert b["compute:Vulkan0"] <= est.gpu_compute / MiB <= b["compute:Vulkan0"] * 1.1, (n_gpu_layers, est, b)


def test_moe_experts_placed_by_tensor_overrides(vulkan, tiny_moe):
    """Offload mode's rules on a real device: the routed experts of the named layers go to the CPU, the rest of
    the model to the device; the tokens are the CPU build's, and the device holds what the planner says."""
    arch, weights = _layout(tiny_moe)
    moe_layers = [i for i, b in enumerate(weights.expert_layers) if b > 0]
    cpu_layers = tuple(moe_layers[: len(moe_layers) // 2])
    rules = [[expert_rule(cpu_layers), "CPU"]]
    cpu = generate(str(tiny_moe), 0, 1024, [], PROMPT, 16)
    run = vulkan.child("generate", path=str(tiny_moe), n_gpu_layers=-1, n_ctx=1024, rules=rules, prompt=PROMPT,
                       max_tokens=16)  # fmt: skip
    assert run["tokens"] == cpu["tokens"]
    overridden = {name for name, buft in run["placements"].items() if buft.startswith("CPU")}
    assert overridden == {f"blk.{i}.ffn_{k}_exps.weight" for i in cpu_layers for k in ("up", "down", "gate")}
    est = estimate(arch, weights, 1024, -1)
    # less the output layer, which lavapipe cannot take: llama.cpp tries each weight's op with a 512-token
    # batch, and 512 logits of R1's 152k vocabulary (297 MiB) exceed its 128 MiB buffers
    assert run["layers"][str(arch.n_layer)] == "Vulkan0" and run["buffers"]["model:CPU"] * MiB >= weights.output
    on_device = est.gpu_weights - sum(weights.expert_layers[i] for i in cpu_layers) - weights.output
    assert _close(on_device / MiB, run["buffers"]["model:Vulkan0"]), (on_device / MiB, run["buffers"])


@pytest.mark.parametrize("n_ctx", [4096, 32768])
@pytest.mark.parametrize("name", ["r1:7b", "r1:8b", "r1:14b"])
def test_no_alloc_compute_per_device_on_full_size_layouts(vulkan, tmp_path, name, n_ctx):
    """llama.cpp's no_alloc accounting (nothing read or allocated) on full-size layouts of the dense distills,
    at two contexts and two micro-batches: the compute buffers on the device and on the host against the
    planner's. (R1's real shapes with a 32k vocabulary: the output matrix of a 152k vocabulary, 426 MiB for
    7B, is larger than a lavapipe buffer, so llama.cpp would run the output layer on the host; the smaller
    vocabulary also makes the feed-forward peak, not the logits, the largest buffer, which the planner must
    get right for the models users bring.) Weights and KV are 0 in llama.cpp's no_alloc log: the real loads
    above check those."""
    from layouts import write_layout

    from localr1.models.catalog import load_catalog

    arch = replace(load_catalog(include_user=False)[name].arch, n_vocab=32000)
    path = write_layout(arch, tmp_path / "layout.gguf")
    for n_ubatch in (512, 256):
        for n_gpu_layers in (-1, 10):
            theirs = vulkan.child("measure", path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, rules=[],
                                  n_ubatch=n_ubatch)  # fmt: skip
            est = estimate(arch, WeightLayout.from_arch(arch, "Q4_K_M"), n_ctx, n_gpu_layers, n_ubatch=n_ubatch)
            where = (n_gpu_layers, n_ubatch, est, theirs)
            assert _close(est.cpu_compute / MiB, theirs["compute:Vulkan_Host"]), where
            if n_gpu_layers < 0:
                assert _close(est.gpu_compute / MiB, theirs["compute:Vulkan0"]), where
            else:  # partial offload: room for the CPU layers' weights copied in (op offload), never less
                assert est.gpu_compute / MiB >= theirs["compute:Vulkan0"], where


@pytest.mark.parametrize("n_ctx", [4096, 32768])
def test_no_alloc_compute_per_device_for_moe_offload(vulkan, tmp_path, n_ctx):
    """Offload mode's layout on a full-size MoE (a DeepSeek-V2-Lite shape, MLA, with a 32k vocabulary): all on
    the device but the first half of the routed experts, kept on the CPU by offload's rule. The device's
    buffer holds one CPU expert tensor at a time for prompts (op offload), the host's the CPU experts'
    intermediates: the planner's figures, with that room, are never under llama.cpp's. (R1's own expert
    tensors are larger than a lavapipe buffer, so llama.cpp would run them on the host.)"""
    from layouts import write_layout

    from localr1.fit.memory import expert_host_compute_bytes, expert_staging_bytes

    arch = Architecture(
        "deepseek2", 30, 2048, 10944, 16, 16, 192, 32000, 163840, n_expert=64, n_expert_used=6, n_expert_shared=2,
        expert_ff=1408, n_dense_lead=1, q_lora_rank=768, kv_lora_rank=512, rope_dim=64, nope_dim=128, v_head_dim=128,
    )  # fmt: skip
    weights = WeightLayout.from_arch(arch, "Q4_K_M")
    path = write_layout(arch, tmp_path / "lite.gguf")
    cpu_layers = tuple(range(1, 15))
    for n_ubatch in (512, 256):
        theirs = vulkan.child("measure", path=str(path), n_ctx=n_ctx, n_gpu_layers=-1, n_ubatch=n_ubatch,
                              rules=[[expert_rule(cpu_layers), "CPU"]])  # fmt: skip
        est = estimate(arch, weights, n_ctx, -1, n_ubatch=n_ubatch)
        device = (est.gpu_compute + expert_staging_bytes(weights, cpu_layers)) / MiB
        host = (est.cpu_compute + expert_host_compute_bytes(arch, n_ubatch)) / MiB
        where = (n_ubatch, device, host, theirs)
        assert theirs["compute:Vulkan0"] <= device <= 2.5 * theirs["compute:Vulkan0"], where
        assert theirs["compute:Vulkan_Host"] <= 1.1 * host, where


def test_out_of_memory_on_the_device_falls_back_to_fewer_layers(vulkan, smollm2):
    """A real allocation failure on the device (its buffers capped at 16 MiB through ggml-vulkan's own
    GGML_VK_FORCE_MAX_BUFFER_SIZE): ask retries with fewer GPU layers, says so, and answers."""
    out = vulkan.localr1(
        "ask", PROMPT, "-m", str(smollm2), "--ctx", "2048", "--max-tokens", "8", "--temperature", "0", "--json",
        GGML_VK_FORCE_MAX_BUFFER_SIZE=str(16 << 20),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    retries = re.findall(r"Out of memory with .*; retrying with .* (\d+) GPU layers\.", out.stderr)
    assert retries, out.stderr
    reply = json.loads(out.stdout)
    assert reply["model"]["n_gpu_layers"] == int(retries[-1]) > 0  # still on the device, with fewer layers
    assert reply["content"] and reply["usage"]["completion_tokens"] == 8
