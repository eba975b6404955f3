"""What each supported architecture writes: hyperparameters, tensor names, and the few tensor rewrites.

The rules are llama.cpp's converter's (``conversion/base.py``, ``llama.py``, ``qwen.py``) for the three
architectures of the R1 builds, so the output matches it key for key and tensor for tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from localr1.errors import UsageError

# Imported inside the functions that use them: gguf (heavy to import, and not needed by every command).

# Hugging Face class -> GGUF architecture
SUPPORTED = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


def gguf_arch(hf_class: str) -> str:
    if hf_class not in SUPPORTED:
        raise UsageError(
            f"cannot convert a {hf_class or 'checkpoint with no architectures entry'}: localr1 converts "
            + ", ".join(SUPPORTED),
            hint="These are the architectures of the R1 builds (Qwen and Llama distills, R1-0528-Qwen3-8B).",
        )
    return SUPPORTED[hf_class]


def find(hp: dict, keys: Iterable[str]):
    return next((hp[k] for k in keys if k in hp), None)


def _require(hp: dict, keys: tuple[str, ...]):
    value = find(hp, keys)
    if value is None:
        raise UsageError(f"config.json has none of {', '.join(keys)}", hint="Is this a complete checkpoint?")
    return value


def rope_parameters(hp: dict) -> dict:
    """llama.cpp's TextModel.__init__: rope settings gathered in one dict, whatever the config's vintage."""
    rp = dict(hp.get("rope_parameters", hp.get("rope_scaling")) or {})
    theta = find(hp, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"])
    partial = find(hp, ["partial_rotary_factor", "rope_pct", "rope_percent"])
    orig_ctx = find(hp, ["original_max_position_embeddings"])
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if "rope_theta" not in rp and theta is not None:
            rp["rope_theta"] = theta
        if "rope_type" not in rp and (rope_type := rp.get("type")) is not None:
            rp["rope_type"] = rope_type
        if "partial_rotary_factor" not in rp and partial is not None:
            rp["partial_rotary_factor"] = partial
        if "original_max_position_embeddings" not in rp and orig_ctx is not None:
            rp["original_max_position_embeddings"] = orig_ctx
    return rp.get("full_attention", rp)


def block_count(hp: dict) -> int:
    return int(_require(hp, ("n_layers", "num_hidden_layers", "n_layer", "num_layers")))


def head_dim(hp: dict) -> int:
    if (dim := hp.get("head_dim")) is not None:
        return int(dim)
    return int(hp["hidden_size"]) // int(hp["num_attention_heads"])


def write_hparams(writer, arch: str, hp: dict, file_type: int, notes: list[str]) -> None:
    """TextModel.set_gguf_parameters, then the architecture's additions."""
    import gguf

    writer.add_block_count(block_count(hp))
    if (n_ctx := find(hp, ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                           "model_max_length"])) is not None:  # fmt: skip
        writer.add_context_length(n_ctx)
    writer.add_embedding_length(_require(hp, ("hidden_size", "n_embd", "dim")))
    if (n_ff := find(hp, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner",
                          "hidden_dim"])) is not None:  # fmt: skip
        writer.add_feed_forward_length(n_ff)
    writer.add_head_count(_require(hp, ("num_attention_heads", "n_head", "n_heads")))
    if (n_head_kv := find(hp, ["num_key_value_heads", "n_kv_heads"])) is not None:
        writer.add_head_count_kv(n_head_kv)
    if hp.get("is_causal") is False:
        writer.add_causal_attention(False)

    rope = rope_parameters(hp)
    if (rope_type := rope.get("rope_type")) is not None:
        factor = rope.get("factor")
        if rope_type == "linear" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(factor)
        elif rope_type == "yarn" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(factor)
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
            if (v := rope.get("extrapolation_factor")) is not None:
                writer.add_rope_scaling_yarn_ext_factor(v)
            if (v := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
                writer.add_rope_scaling_yarn_attn_factor(v)
            if (v := rope.get("beta_fast")) is not None:
                writer.add_rope_scaling_yarn_beta_fast(v)
            if (v := rope.get("beta_slow")) is not None:
                writer.add_rope_scaling_yarn_beta_slow(v)
        elif rope_type in ("su", "longrope"):
            writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        elif rope_type.lower() not in ("llama3", "default", "dynamic"):  # llama3 becomes the rope_freqs tensor
            notes.append(f"unknown RoPE type {rope_type!r} left out, as llama.cpp's converter does")
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
    if (eps := find(hp, ["rms_norm_eps", "norm_eps"])) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if (eps := find(hp, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        writer.add_layer_norm_eps(eps)
    if (dim := hp.get("head_dim")) is not None:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    writer.add_file_type(file_type)

    if arch == "llama":
        writer.add_vocab_size(hp["vocab_size"])
        writer.add_rope_dimension_count(head_dim(hp))


def llama3_rope_factors(hp: dict) -> np.ndarray | None:
    """The rope_freqs tensor llama.cpp writes for Llama 3.1's scaled RoPE (the R1 Llama distills use it).

    Float32 arithmetic in the order llama.cpp's converter does it in PyTorch, where ``x / tensor`` is
    ``reciprocal(tensor) * x``. Only ``base ** (i / dim)`` may differ from PyTorch's by one unit in the last
    place: PyTorch's vectorized pow is not libm's; here it is the float64 power rounded once."""
    rope = rope_parameters(hp)
    if not rope or rope.get("rope_type", "").lower() != "llama3":
        return None
    f32 = np.float32
    base = rope.get("rope_theta", 10000.0)
    dim = head_dim(hp)
    exponents = np.arange(0, dim, 2, dtype=np.float32) / f32(dim)
    freqs = f32(1) / (np.float64(base) ** exponents.astype(np.float64)).astype(np.float32)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = (f32(1) / freq) * f32(2 * math.pi)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = ((f32(1) / wavelen) * f32(old_ctx) - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


@dataclass(frozen=True)
class Rewrite:
    """How one checkpoint tensor becomes one GGUF tensor."""

    source: str | None  # None for generated tensors
    name: str
    shape: tuple[int, ...]
    permute_heads: int | None = None  # Llama's q/k row order: undo HF's rotary permutation


def hf_name(name: str, arch: str) -> str:
    name = name.replace("language_model.", "") if "language_model." in name else name
    if arch == "llama" and "text_model." in name:
        name = name.replace("text_model.", "")
    return name


def plan_tensors(names: list[str], shape_of, arch: str, hp: dict) -> list[Rewrite]:
    import gguf

    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), block_count(hp))
    plan: list[Rewrite] = []
    if arch == "llama" and (factors := llama3_rope_factors(hp)) is not None:
        plan.append(Rewrite(None, "rope_freqs.weight", factors.shape))
    n_head = find(hp, ["n_heads", "num_attention_heads"])
    n_kv = find(hp, ["n_kv_heads", "num_key_value_heads"])
    for source in names:
        name = hf_name(source, arch)
        if name.endswith(SKIPPED_SUFFIXES):
            continue
        new = tmap.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UsageError(
                f"tensor {source!r} has no place in a {arch} GGUF",
                hint="The checkpoint carries weights its architecture does not have (adapter, head, vision tower?).",
            )
        heads = None
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv if n_kv is not None else n_head
        plan.append(Rewrite(source, new, tuple(shape_of(source)), heads))
    return plan


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: HF stores q/k rows for rotate-half RoPE; llama.cpp wants them interleaved."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
