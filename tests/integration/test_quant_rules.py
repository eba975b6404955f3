"""The planner's tensor types and weight bytes against llama.cpp's own quantizer.

Two kinds of generated F16 models (tests/llama_quantize.py), nothing read from a number written by hand:

* every catalog build at its real size, data left sparse: llama.cpp's quantizer in dry-run mode reads the
  tensor table and says which type each tensor would get, for every standard quant;
* small shapes of every architecture the catalog uses (and the rules' corner cases: rows no block divides,
  tied embeddings, eight experts, grouped-query ratios either side of 4, an 80-layer llama), random
  weights, quantized for real to every quant the catalog lists; the written file's tensors are compared.
"""

from __future__ import annotations

from collections import Counter

import pytest
from llama_quantize import llama_quantize, write_f16_model

from localr1.fit.arch import Architecture
from localr1.fit.memory import WeightLayout
from localr1.fit.quant_rules import DEFAULT_TYPE, planned_types, tensor_bytes
from localr1.models.catalog import load_catalog
from localr1.models.gguf_info import read_gguf

pytestmark = pytest.mark.integration

CATALOG = load_catalog(include_user=False)
DISTINCT = {name: m.arch for name, m in CATALOG.items() if name != "r1-0528:671b"}  # the same shape as r1:671b
CATALOG_QUANTS = sorted({q for m in CATALOG.values() for q in m.quants if q in DEFAULT_TYPE})
STANDARD = [q for q in DEFAULT_TYPE if q not in ("F32", "BF16")]

SMALL = {
    # rows of 352 (ffn_down) fit no 256-block type: the fallbacks; 4 query heads per KV head
    "llama": Architecture("llama", 32, 256, 352, 4, 1, 64, 320, 512),
    # an 80-layer llama with grouped-query attention is llama.cpp's "70B": attn_v gets more bits
    "llama-80-layers": Architecture("llama", 80, 256, 256, 4, 2, 64, 320, 512),
    # a 320-wide model: no 256-block type fits the output matrix or any row of n_embd
    "qwen2-odd-width": Architecture("qwen2", 28, 320, 512, 5, 1, 64, 320, 512),
    "qwen2-tied": Architecture("qwen2", 28, 256, 512, 4, 2, 64, 320, 512, tied_embeddings=True),
    # rows of 200: no 32-block type either, so F16
    "qwen3": Architecture("qwen3", 36, 256, 200, 4, 2, 128, 320, 512),
    # eight experts: llama.cpp's Mixtral rules
    "qwen3moe-8-experts": Architecture("qwen3moe", 8, 256, 256, 4, 2, 64, 320, 512, n_expert=8, n_expert_used=2,
                                       expert_ff=256),
    "deepseek2": Architecture(
        "deepseek2", 6, 256, 512, 4, 4, 48, 320, 512, n_expert=16, n_expert_used=2, n_expert_shared=1,
        expert_ff=256, n_dense_lead=1, q_lora_rank=64, kv_lora_rank=64, rope_dim=16, nope_dim=32, v_head_dim=32,
    ),
}  # fmt: skip


def _mismatches(arch: Architecture, quant: str, got: dict[str, str]) -> dict[str, tuple[str, str]]:
    planned = planned_types(arch, quant)
    assert set(planned) == set(got), f"{quant}: tensor names differ"
    return {name: (planned[name], t) for name, t in got.items() if planned[name] != t}


@pytest.mark.parametrize("name", sorted(DISTINCT))
def test_real_size_builds_match_llama_quantize_for_every_standard_quant(name, tmp_path):
    arch = DISTINCT[name]
    source = write_f16_model(arch, tmp_path / "f16.gguf", sparse=True)
    chosen = llama_quantize(source, tmp_path, STANDARD, dry_run=True)
    shapes = {t.name: t.shape for t in arch.tensors()}
    for quant, got in chosen.items():
        assert not _mismatches(arch, quant, got), (name, quant, _mismatches(arch, quant, got))
        # the planner's weight bytes are the file's tensor bytes
        assert WeightLayout.from_arch(arch, quant).total == sum(tensor_bytes(t, shapes[n]) for n, t in got.items())
    # the rules are not idle on these shapes: Q4_K_M mixes types
    assert len(Counter(chosen["Q4_K_M"].values())) >= 3


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_shapes_quantized_for_real(name, tmp_path):
    arch = SMALL[name]
    source = write_f16_model(arch, tmp_path / "f16.gguf", sparse=False)
    written = llama_quantize(source, tmp_path, CATALOG_QUANTS, dry_run=False)
    for quant in CATALOG_QUANTS:
        assert not _mismatches(arch, quant, written[quant]), (name, quant, _mismatches(arch, quant, written[quant]))
    # every other standard quant by the dry run, which the files above show agrees with a real run
    dry = llama_quantize(source, tmp_path, STANDARD, dry_run=True)
    for quant in CATALOG_QUANTS:
        assert dry[quant] == written[quant], (name, quant)
    for quant in STANDARD:
        assert not _mismatches(arch, quant, dry[quant]), (name, quant, _mismatches(arch, quant, dry[quant]))


def test_weight_bytes_equal_a_written_file(tmp_path):
    """The total the planner uses against the sizes in the quantized file's own header."""
    for name in ("qwen3moe-8-experts", "deepseek2", "qwen2-odd-width"):
        arch = SMALL[name]
        source = write_f16_model(arch, tmp_path / f"{name}.gguf", sparse=False)
        llama_quantize(source, tmp_path, ["Q4_K_M", "Q3_K_M"], dry_run=False, keep=True)
        for quant in ("Q4_K_M", "Q3_K_M"):
            info = read_gguf(tmp_path / f"{quant}.gguf")
            planned = WeightLayout.from_arch(arch, quant).total
            assert WeightLayout.from_gguf(info.tensors, arch.n_layer).total == planned, (name, quant)
