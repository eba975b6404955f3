"""Model architectures: the numbers the planner needs, and the tensors llama.cpp builds from them.

An :class:`Architecture` comes from a catalog entry (a model not on disk yet) or from a GGUF header. Its
:meth:`tensors` list names and shapes every weight the way llama.cpp's loader does (llama, qwen2, qwen3,
deepseek2 with MLA and MoE), which gives exact parameter counts per layer for the memory estimate, and
lets the tests write full-size sparse GGUF layouts for llama.cpp to account.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from localr1.errors import CatalogError

TensorRole = Literal["embd", "output", "norm", "attn", "ffn", "router", "exps", "shexp"]
SUPPORTED = ("llama", "qwen2", "qwen3", "qwen3moe", "deepseek2")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    role: TensorRole
    layer: int | None = None  # None: not a repeating layer (embeddings, output)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Architecture:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    ctx_train: int
    tied_embeddings: bool = False
    # Mixture of experts (deepseek2)
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    expert_ff: int = 0
    n_dense_lead: int = 0
    # Multi-head latent attention (deepseek2)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    nope_dim: int = 0
    v_head_dim: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def query_heads_per_kv(self) -> int:
        """Query heads that share each cached KV head, as llama.cpp's hparams.n_gqa() (an MLA file stores one
        compressed KV head, which every query head reads)."""
        return max(self.n_head // (1 if self.is_mla else max(self.n_head_kv, 1)), 1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Architecture:
        names = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(names)
        if unknown:
            raise CatalogError(f"{where}: unknown architecture field {sorted(unknown)[0]!r}")
        required = ("arch", "n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab", "ctx_train")
        for key in required:
            if key not in raw:
                raise CatalogError(f"{where}: architecture is missing {key!r}")
        for key, value in raw.items():
            expected = str if key == "arch" else bool if key == "tied_embeddings" else int
            if not isinstance(value, expected) or (expected is int and (isinstance(value, bool) or value < 0)):
                raise CatalogError(f"{where}: architecture field {key} must be a non-negative {expected.__name__}")
        if raw["arch"] not in SUPPORTED:
            raise CatalogError(f"{where}: architecture {raw['arch']!r} is not one of {', '.join(SUPPORTED)}")
        arch = cls(**raw)
        if arch.arch == "deepseek2" and not (arch.is_moe and arch.is_mla and arch.expert_ff and arch.v_head_dim):
            raise CatalogError(f"{where}: deepseek2 needs the expert and MLA numbers")
        if arch.arch == "qwen3moe" and not (arch.is_moe and arch.expert_ff and arch.n_expert_used):
            raise CatalogError(f"{where}: qwen3moe needs the expert numbers")
        return arch

    @classmethod
    def from_gguf(cls, md: dict[str, Any]) -> Architecture:
        """The same numbers, read from a GGUF header's metadata."""
        a = str(md.get("general.architecture", ""))

        def g(key: str, default: int = 0) -> int:
            value = md.get(f"{a}.{key}", default)
            return int(value[0]) if isinstance(value, list) else int(value)

        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = g("vocab_size") or (
            getattr(tokens, "length", None) or (len(tokens) if isinstance(tokens, list) else 0)
        )
        n_head = g("attention.head_count")
        n_embd = g("embedding_length")
        key_len = g("attention.key_length")
        common = dict(
            arch=a,
            n_layer=g("block_count"),
            n_embd=n_embd,
            n_ff=g("feed_forward_length"),
            n_head=n_head,
            n_head_kv=g("attention.head_count_kv", n_head),
            head_dim=key_len or (n_embd // n_head if n_head else 0),
            n_vocab=n_vocab,
            ctx_train=g("context_length"),
        )
        if a == "qwen3moe":
            common.update(
                n_expert=g("expert_count"),
                n_expert_used=g("expert_used_count"),
                expert_ff=g("expert_feed_forward_length"),
            )
        if a == "deepseek2":
            rope = g("rope.dimension_count")
            kv_rank = g("attention.kv_lora_rank")
            k_mla = g("attention.key_length_mla")
            v_mla = g("attention.value_length_mla")
            # MLA files store one compressed KV head; the catalog counts the model's own heads
            common.update(n_head_kv=n_head, head_dim=(k_mla or key_len))
            common.update(
                n_expert=g("expert_count"),
                n_expert_used=g("expert_used_count"),
                n_expert_shared=g("expert_shared_count"),
                expert_ff=g("expert_feed_forward_length"),
                n_dense_lead=g("leading_dense_block_count"),
                q_lora_rank=g("attention.q_lora_rank"),
                kv_lora_rank=kv_rank,
                rope_dim=rope,
                nope_dim=(k_mla or key_len) - rope,
                v_head_dim=v_mla or g("attention.value_length"),
            )
        return cls(**common)

    # --- the tensors -------------------------------------------------------------------------------------
    def tensors(self) -> list[TensorSpec]:
        e, v = self.n_embd, self.n_vocab
        out = [TensorSpec("token_embd.weight", (e, v), "embd"), TensorSpec("output_norm.weight", (e,), "norm")]
        if not self.tied_embeddings:
            out.append(TensorSpec("output.weight", (e, v), "output"))
        for i in range(self.n_layer):
            out += self._layer(i)
        return out

    def _layer(self, i: int) -> list[TensorSpec]:
        p = f"blk.{i}."
        e = self.n_embd

        def t(name: str, shape: tuple[int, ...], role: TensorRole) -> TensorSpec:
            return TensorSpec(p + name, shape, role, i)

        ts = [t("attn_norm.weight", (e,), "norm"), t("ffn_norm.weight", (e,), "norm")]
        if self.arch == "deepseek2":
            ts += self._mla(t)
            if i < self.n_dense_lead:
                ts += self._dense_ffn(t)
            else:
                x, f, shared = self.n_expert, self.expert_ff, self.expert_ff * self.n_expert_shared
                ts += [
                    t("ffn_gate_inp.weight", (e, x), "router"),
                    t("exp_probs_b.bias", (x,), "router"),
                    t("ffn_gate_exps.weight", (e, f, x), "exps"),
                    t("ffn_up_exps.weight", (e, f, x), "exps"),
                    t("ffn_down_exps.weight", (f, e, x), "exps"),
                    t("ffn_gate_shexp.weight", (e, shared), "shexp"),
                    t("ffn_up_shexp.weight", (e, shared), "shexp"),
                    t("ffn_down_shexp.weight", (shared, e), "shexp"),
                ]
            return ts
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        ts += [
            t("attn_q.weight", (e, q_dim), "attn"),
            t("attn_k.weight", (e, kv_dim), "attn"),
            t("attn_v.weight", (e, kv_dim), "attn"),
            t("attn_output.weight", (q_dim, e), "attn"),
        ]
        if self.arch == "qwen2":
            ts += [
                t("attn_q.bias", (q_dim,), "attn"),
                t("attn_k.bias", (kv_dim,), "attn"),
                t("attn_v.bias", (kv_dim,), "attn"),
            ]
        if self.arch in ("qwen3", "qwen3moe"):
            ts += [t("attn_q_norm.weight", (self.head_dim,), "norm"), t("attn_k_norm.weight", (self.head_dim,), "norm")]
        if self.arch == "qwen3moe":
            x, f = self.n_expert, self.expert_ff
            return ts + [
                t("ffn_gate_inp.weight", (e, x), "router"),
                t("ffn_gate_exps.weight", (e, f, x), "exps"),
                t("ffn_up_exps.weight", (e, f, x), "exps"),
                t("ffn_down_exps.weight", (f, e, x), "exps"),
            ]
        return ts + self._dense_ffn(t)

    def _dense_ffn(self, t: Any) -> list[TensorSpec]:
        e, f = self.n_embd, self.n_ff
        return [
            t("ffn_gate.weight", (e, f), "ffn"),
            t("ffn_up.weight", (e, f), "ffn"),
            t("ffn_down.weight", (f, e), "ffn"),
        ]

    def _mla(self, t: Any) -> list[TensorSpec]:
        e, h = self.n_embd, self.n_head
        k_head = self.nope_dim + self.rope_dim
        return [
            t("attn_q_a_norm.weight", (self.q_lora_rank,), "norm"),
            t("attn_kv_a_norm.weight", (self.kv_lora_rank,), "norm"),
            t("attn_q_a.weight", (e, self.q_lora_rank), "attn"),
            t("attn_q_b.weight", (self.q_lora_rank, h * k_head), "attn"),
            t("attn_kv_a_mqa.weight", (e, self.kv_lora_rank + self.rope_dim), "attn"),
            t("attn_k_b.weight", (self.nope_dim, self.kv_lora_rank, h), "attn"),
            t("attn_v_b.weight", (self.kv_lora_rank, self.v_head_dim, h), "attn"),
            t("attn_output.weight", (h * self.v_head_dim, e), "attn"),
        ]

    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors())

    def gguf_metadata(self) -> dict[str, int | float | str | bool]:
        """The ``{arch}.*`` keys llama.cpp reads for this architecture (for writing layouts)."""
        a = self.arch
        md: dict[str, int | float | str | bool] = {
            f"{a}.block_count": self.n_layer,
            f"{a}.context_length": self.ctx_train,
            f"{a}.embedding_length": self.n_embd,
            f"{a}.feed_forward_length": self.n_ff,
            f"{a}.attention.head_count": self.n_head,
            f"{a}.attention.head_count_kv": self.n_head_kv,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
            f"{a}.rope.freq_base": 10000.0,
            f"{a}.vocab_size": self.n_vocab,
        }
        if a in ("qwen3", "qwen3moe") or self.head_dim != self.n_embd // self.n_head:
            md[f"{a}.attention.key_length"] = self.head_dim
            md[f"{a}.attention.value_length"] = self.head_dim
        if a == "qwen3moe":
            md.update(
                {
                    f"{a}.expert_count": self.n_expert,
                    f"{a}.expert_used_count": self.n_expert_used,
                    f"{a}.expert_feed_forward_length": self.expert_ff,
                }
            )
        if a == "deepseek2":
            md.update(
                {
                    f"{a}.attention.head_count_kv": 1,
                    f"{a}.leading_dense_block_count": self.n_dense_lead,
                    f"{a}.expert_count": self.n_expert,
                    f"{a}.expert_used_count": self.n_expert_used,
                    f"{a}.expert_shared_count": self.n_expert_shared,
                    f"{a}.expert_feed_forward_length": self.expert_ff,
                    f"{a}.expert_weights_scale": 2.5,
                    f"{a}.expert_weights_norm": True,
                    f"{a}.expert_gating_func": 2,
                    f"{a}.attention.q_lora_rank": self.q_lora_rank,
                    f"{a}.attention.kv_lora_rank": self.kv_lora_rank,
                    f"{a}.attention.key_length": self.kv_lora_rank + self.rope_dim,
                    f"{a}.attention.value_length": self.kv_lora_rank,
                    f"{a}.attention.key_length_mla": self.nope_dim + self.rope_dim,
                    f"{a}.attention.value_length_mla": self.v_head_dim,
                    f"{a}.rope.dimension_count": self.rope_dim,
                }
            )
        return md
