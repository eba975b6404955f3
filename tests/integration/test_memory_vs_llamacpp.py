"""The planner's memory figures against llama.cpp's own accounting (no_alloc: nothing is read or allocated).

Every architecture of the catalog is written as a full-size sparse GGUF layout (real header, no data);
the real DeepSeek-R1-Distill-Qwen-7B header is used as is. llama.cpp reserves a context for each and
reports its KV cache and compute buffer; the planner must agree within 3%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from layouts import write_layout

from localr1.fit.arch import Architecture
from localr1.fit.memory import WeightLayout, compute_bytes, kv_cache_bytes
from localr1.models.catalog import load_catalog
from localr1.models.gguf_info import read_gguf
from localr1.units import MiB

pytestmark = pytest.mark.integration

CATALOG = load_catalog(include_user=False)
ARCHS = {name: m.arch for name, m in CATALOG.items() if name != "r1-0528:671b"}  # same shape as r1:671b
# shapes the catalog does not hold, so the formulas are not only right for the numbers they were read from
ARCHS["deepseek2-lite-shape"] = Architecture(
    "deepseek2", 30, 2048, 10944, 16, 16, 192, 102400, 163840, n_expert=64, n_expert_used=6, n_expert_shared=2,
    expert_ff=1408, n_dense_lead=1, q_lora_rank=768, kv_lora_rank=512, rope_dim=64, nope_dim=128, v_head_dim=128,
)  # fmt: skip
# the same with a 32k vocabulary: the logits no longer hide MLA's working set and the experts' intermediates
ARCHS["deepseek2-lite-32k-vocab"] = Architecture(
    "deepseek2", 30, 2048, 10944, 16, 16, 192, 32000, 163840, n_expert=64, n_expert_used=6, n_expert_shared=2,
    expert_ff=1408, n_dense_lead=1, q_lora_rank=768, kv_lora_rank=512, rope_dim=64, nope_dim=128, v_head_dim=128,
)  # fmt: skip
ARCHS["qwen3-odd-shape"] = Architecture("qwen3", 5, 1024, 3072, 16, 4, 96, 60000, 8192)
ARCHS["qwen3moe-30b-a3b-shape"] = Architecture(
    "qwen3moe", 48, 2048, 6144, 32, 4, 128, 151936, 40960, n_expert=128, n_expert_used=8, expert_ff=768
)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(arch, root / f"{name.replace(':', '_')}.gguf") for name, arch in ARCHS.items()}


def _close(ours: float, theirs: float, tolerance: float = 0.03) -> bool:
    return abs(ours - theirs) <= tolerance * theirs + 0.02


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("flash_attn", [True, False])
def test_kv_and_compute_agree_with_llamacpp(layouts, name, flash_attn):
    from localr1.engine.llama_cpp import measure_allocation

    arch = ARCHS[name]
    for n_ctx in (4096, 32768):
        theirs = measure_allocation(layouts[name], n_ctx=n_ctx, flash_attn=flash_attn)
        kv = kv_cache_bytes(arch, n_ctx) / MiB
        compute = compute_bytes(arch, n_ctx, flash_attn=flash_attn) / MiB
        assert _close(kv, theirs["kv"]), (name, n_ctx, kv, theirs)
        # 3% for every shape an R1 build has and the dense made-up shapes; deepseek2's MLA and MoE working sets
        # are upper envelopes (memory.py): never under for a made-up shape, and at most 25% over here
        where = (name, n_ctx, compute, theirs)
        if name in CATALOG or arch.arch != "deepseek2":
            assert _close(compute, theirs["compute:CPU"]), where
        else:
            assert theirs["compute:CPU"] <= compute <= 1.25 * theirs["compute:CPU"] + 0.02, where
        assert _close(4 * arch.n_vocab / MiB, theirs["output:CPU"], 0.05)


@pytest.mark.parametrize("name", ["r1:7b", "r1:8b", "r1:671b", "qwen3-odd-shape"])
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_quantized_kv_caches_agree_with_llamacpp(layouts, name, kv_type):
    """--kv-type q8_0 / q4_0: llama.cpp's KV cache (flash attention on, as it needs for a quantized V)."""
    from localr1.engine.llama_cpp import measure_allocation

    arch = ARCHS[name]
    for n_ctx in (4096, 32768):
        theirs = measure_allocation(layouts[name], n_ctx=n_ctx, kv_type=kv_type)
        ours = kv_cache_bytes(arch, n_ctx, kv_type=kv_type) / MiB
        assert _close(ours, theirs["kv"]), (name, n_ctx, ours, theirs)
        assert ours < kv_cache_bytes(arch, n_ctx) / MiB * (0.55 if kv_type == "q8_0" else 0.3)


def test_a_quantized_v_cache_without_flash_attention_is_refused(layouts):
    from localr1.engine.llama_cpp import measure_allocation
    from localr1.errors import UsageError

    with pytest.raises(UsageError, match="needs flash attention"):
        measure_allocation(layouts["r1:7b"], n_ctx=4096, kv_type="q8_0", flash_attn=False)
    with pytest.raises(UsageError, match="--kv-type must be one of"):
        measure_allocation(layouts["r1:7b"], n_ctx=4096, kv_type="q2_k")


def test_real_r1_7b_layout(r1_header, tmp_path):
    """The real 7B header, extended to its full size as a sparse file."""
    from localr1.engine.llama_cpp import measure_allocation

    info = read_gguf(r1_header, check_data=False)
    sparse = tmp_path / "r1-7b.gguf"
    with open(r1_header, "rb") as src, open(sparse, "wb") as dst:
        dst.write(src.read(info.data_offset))
        dst.truncate(info.data_offset + max(t.offset + t.nbytes for t in info.tensors))
    arch = Architecture.from_gguf(read_gguf(sparse).metadata)
    assert arch == CATALOG["r1:7b"].arch  # the catalog's numbers are the file's
    for n_ctx in (2048, 8192, 65536):
        theirs = measure_allocation(sparse, n_ctx=n_ctx)
        assert _close(kv_cache_bytes(arch, n_ctx) / MiB, theirs["kv"])
        assert _close(compute_bytes(arch, n_ctx) / MiB, theirs["compute:CPU"])
    # weights: from the header exactly, and the bits-per-weight estimate for Q4_K_M within 3%
    exact = WeightLayout.from_gguf(info.tensors, arch.n_layer).total
    assert exact == info.tensor_bytes
    assert _close(WeightLayout.from_arch(arch, "Q4_K_M").total, exact)


@pytest.mark.parametrize("name", [n for n in ARCHS if n in CATALOG])
def test_catalog_numbers_give_the_published_parameter_counts(name):
    assert abs(ARCHS[name].n_params() / 1e9 - CATALOG[name].params_b) / CATALOG[name].params_b < 0.005


def test_layout_header_round_trips(layouts):
    for name, path in layouts.items():
        assert Architecture.from_gguf(read_gguf(Path(path)).metadata) == ARCHS[name], name
