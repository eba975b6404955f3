"""The type llama.cpp's quantizer gives each tensor, and so a quantized file's exact weight bytes.

``llama-quantize --type Q4_K_M`` does not make every weight Q4_K: the output matrix (and token embeddings
tied to it) get Q6_K, a share of the layers' ``attn_v`` and ``ffn_down`` get "more bits" by rules that depend
on the layer index and count, grouped-query models keep ``attn_v`` at a higher type in the low quants, and a
row length a type cannot hold falls back to a compatible one. This is those rules, ported from
``llama_tensor_get_type`` in the vendored llama.cpp (src/llama-quant.cpp) for the architectures localr1
plans (llama, qwen2, qwen3, qwen3moe, deepseek2), walking the tensors in the order its loader does (its
counters count tensors in that order). tests/integration/test_quant_rules.py quantizes generated F16 models
of every architecture with llama.cpp itself for every quant and compares each tensor's type and the total.

The source is what ``convert_hf_to_gguf.py --outtype f16`` writes: 1-D tensors and the expert router in F32,
every other weight in F16. Dynamic mixes only a publisher makes (unsloth's ``UD-*``) follow no rule here:
the catalog keeps their measured sizes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from localr1.fit.arch import Architecture, TensorSpec
from localr1.models.gguf_info import GGML_TYPES, tensor_nbytes

TYPE_IDS: dict[str, int] = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}

# llama_ftype_get_default_type: the type a file type gives a weight before the rules adjust it
DEFAULT_TYPE: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "MXFP4_MOE": "MXFP4",
}  # fmt: skip
NOT_QUANTIZED = frozenset({"F32", "F16", "BF16"})

# tensor_type_fallback: a row length the type's block does not divide
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}  # fmt: skip
_IQ2_FAMILY = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})


def block_size(type_name: str) -> int:
    return GGML_TYPES[TYPE_IDS[type_name]][1]


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """ggml_nbytes of a tensor of this type (shape in GGUF order, the row length first)."""
    return tensor_nbytes(TYPE_IDS[type_name], shape)


def source_type(spec: TensorSpec) -> str:
    """The type convert_hf_to_gguf.py writes this tensor in, for an F16 conversion."""
    return "F32" if len(spec.shape) == 1 or "ffn_gate_inp" in spec.name else "F16"


@dataclass(frozen=True)
class ModelFacts:
    """What of the model's hyperparameters the rules read."""

    arch: str
    n_layer: int
    n_expert: int
    n_gqa: int  # query heads per KV head, as llama.cpp's hparams.n_gqa() (integer division)
    is_70b: bool  # llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped-query attention, an 80-layer qwen2

    @classmethod
    def of(cls, arch: Architecture) -> ModelFacts:
        is_70b = arch.n_layer == 80 and (
            (arch.arch == "llama" and arch.n_head != arch.n_head_kv) or arch.arch == "qwen2"
        )
        return cls(arch.arch, arch.n_layer, arch.n_expert, arch.query_heads_per_kv, is_70b)


def _layer_order(name: str) -> tuple[int, str]:
    """llama_model_loader's weights_map order: the layer number (-1 outside the blocks), then the name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


def _allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    return (
        len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name and "ffn_gate_inp.weight" not in name
    )


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _Quantizer:
    """One pass over a model's tensors with llama.cpp's counters (quantize_state_impl)."""

    def __init__(self, facts: ModelFacts, ftype: str, imatrix: bool, names: list[str]) -> None:
        self.f, self.ftype, self.imatrix = facts, ftype, imatrix
        self.n_attention_wv = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
        self.tied = "output.weight" not in names
        self.n_ffn = facts.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    def _layer(self, counter: int, name: str) -> int:
        if max(1, self.f.n_expert) > 1:  # experts: the layer comes from the name
            return _layer_order(name)[0]
        return counter

    def type_of(self, name: str, shape: tuple[int, ...], source: str) -> str:
        if not _allows_quantization(name, shape):
            return source
        default = DEFAULT_TYPE[self.ftype]
        if default in NOT_QUANTIZED:
            return default
        return self._fallback(shape, self._rules(default, name, shape, _category(name)))

    def _fallback(self, shape: tuple[int, ...], t: str) -> str:
        ncols = shape[0]
        if ncols % block_size(t) == 0:
            return t
        if t in _FALLBACK:
            t = _FALLBACK[t]
        elif block_size(t) > 32:
            raise ValueError(f"llama.cpp defines no fallback for type {t}")
        return t if ncols % block_size(t) == 0 else "F16"

    def _rules(self, new: str, name: str, shape: tuple[int, ...], cat: str) -> str:  # noqa: C901 - llama.cpp's
        f, ftype = self.f, self.ftype
        v_like = cat in ("attn_v", "attn_qkv", "attn_kv_b")
        if cat == "output" or (self.tied and cat == "token_embd"):
            if ftype == "MXFP4_MOE" or shape[0] % block_size(new):
                return "Q8_0"
            if ftype in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                return "Q5_K"
            return new if new == "Q8_0" else "Q6_K"
        if ftype == "MXFP4_MOE":
            return "MXFP4" if len(shape) > 2 and shape[2] > 1 else "Q8_0"
        if cat == "token_embd":
            if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                return "Q2_K"
            if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                return "IQ3_S"
            if ftype in ("TQ1_0", "TQ2_0"):
                return "Q4_K"
            return new
        if ftype in _IQ2_FAMILY:
            return self._iq2_rules(new, name, cat, v_like)
        if v_like:
            return self._attn_v(new)
        if cat == "attn_k":
            if f.n_expert == 8:
                return "Q8_0"
            return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ftype, new)
        if cat == "attn_q":
            return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ftype, new)
        if cat == "ffn_down":
            return self._ffn_down(new, name)
        if cat == "attn_output":
            if f.n_expert == 8:
                eight = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S")
                return "Q5_K" if ftype in (*eight, "IQ3_M", "IQ4_XS") else new
            return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(
                ftype, new
            )
        if cat in ("ffn_gate", "ffn_up"):
            counter = self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up
            i, n = self._layer(counter, name), self.n_ffn
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
            if ftype == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                return "IQ3_XXS"
        return new

    def _iq2_rules(self, new: str, name: str, cat: str, v_like: bool) -> str:
        f, ftype = self.f, self.ftype
        s_or_m = ftype in ("IQ2_S", "IQ2_M")
        if v_like:
            self.i_attention_wv += 1
            if f.n_gqa >= 4 or f.n_expert >= 4:
                return "Q4_K"
            return "IQ3_S" if s_or_m else "Q2_K"
        if f.n_expert == 8 and cat == "attn_k":
            return "Q4_K"
        if cat == "ffn_down":
            early = self.i_ffn_down < self.n_ffn // 8
            self.i_ffn_down += 1
            return ("IQ3_S" if s_or_m else "Q2_K") if early else new
        if cat == "attn_output":
            if f.n_expert == 8:
                return "Q5_K"
            if ftype in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS"
            return "IQ3_S" if s_or_m else new
        return new

    def _attn_v(self, new: str) -> str:
        f, ftype, i = self.f, self.ftype, self.i_attention_wv
        gqa4 = f.n_gqa >= 4
        if ftype == "Q2_K":
            new = "Q4_K" if gqa4 else "Q3_K"
        elif ftype == "Q2_K_S" and gqa4:
            new = "Q4_K"
        elif ftype == "IQ3_XXS":
            new = "Q4_K" if gqa4 else ("IQ3_S" if not self.imatrix else "IQ3_XXS")
        elif (ftype in ("IQ3_XS", "IQ3_S") and gqa4) or ftype == "IQ3_M":
            new = "Q4_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "Q3_K_L" or (ftype in ("IQ4_NL", "IQ4_XS") and gqa4):
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, self.n_attention_wv):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if f.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if f.n_expert == 8:
            new = "Q8_0"
        self.i_attention_wv += 1
        return new

    def _ffn_down(self, new: str, name: str) -> str:
        ftype, imatrix = self.ftype, self.imatrix
        i, n = self._layer(self.i_ffn_down, name), self.n_ffn
        self.i_ffn_down += 1
        if ftype == "Q2_K":
            return "Q3_K"
        if ftype == "Q2_K_S":
            return "Q4_K" if i < n // 8 else new
        if ftype == "IQ3_XXS" and not imatrix:
            return "Q4_K" if i < n // 8 else "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"  # (Falcon's exception aside)
        if ftype == "IQ3_M" and (i < n // 8 or (self.f.n_expert == 8 and _use_more_bits(i, n))):
            return "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype == "Q4_K_M":
            return "Q6_K" if _use_more_bits(i, n) else new
        if i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not imatrix:
            return "Q5_K"
        if ftype == "Q5_K_M" and _use_more_bits(i, n):
            return "Q6_K"
        if ftype == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if ftype in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
            return "Q4_1" if ftype == "Q4_0" else "Q5_1"
        return new


def quantized_types(
    tensors: Iterable[tuple[str, tuple[int, ...], str]], facts: ModelFacts, quant: str, *, imatrix: bool = False
) -> dict[str, str]:
    """Each tensor's type after ``llama-quantize`` to ``quant``: (name, shape, source type) in, name -> type out."""
    ftype = quant.upper()
    if ftype not in DEFAULT_TYPE:
        raise ValueError(f"no quantization rules for {quant}")
    ordered = sorted(tensors, key=lambda t: _layer_order(t[0]))
    q = _Quantizer(facts, ftype, imatrix, [name for name, _, _ in ordered])
    return {name: q.type_of(name, shape, source) for name, shape, source in ordered}


def planned_types(arch: Architecture, quant: str, *, imatrix: bool = False) -> dict[str, str]:
    """The types of a catalog model's tensors once converted to F16 and quantized to ``quant``."""
    specs = [(t.name, t.shape, source_type(t)) for t in arch.tensors()]
    return quantized_types(specs, ModelFacts.of(arch), quant, imatrix=imatrix)


def has_rules(quant: str) -> bool:
    return quant.upper() in DEFAULT_TYPE
