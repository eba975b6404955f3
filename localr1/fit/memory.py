"""How much memory a (model, quant, context, GPU layers) choice takes, per device, as llama.cpp allocates it.

Weights come from the GGUF header's tensor sizes when the file is on disk, otherwise from the
architecture's tensor shapes at the types llama.cpp's quantizer gives them (``quant_rules``: exact for the
standard quants) or, for a publisher's own mix, the quant's measured bits per weight. The KV cache, output and compute buffers
follow llama.cpp's own allocation (checked against llama.cpp's ``no_alloc`` accounting in the tests):

* KV cache: per layer and token, K and V rows in f16; MLA (deepseek2) keeps only the compressed latent
  plus the rope part (``kv_lora_rank + rope_dim``), V being a view of K.
* output: one row of logits (``n_vocab`` floats).
* compute: the larger of the logits of a micro-batch and the attention working set. Without flash
  attention the attention scores (``n_ctx x n_ubatch x n_head`` floats) dominate at long contexts.

Placement mirrors llama.cpp with ``n_gpu_layers = k`` (``i_gpu_start = n_layer + 1 - k`` in
llama-model.cpp, the output layer counting as layer ``n_layer``): the output layer goes to the GPU first,
then the last ``k - 1`` repeating layers and their KV; token embeddings stay on the CPU. (Checked per
device on a real ggml device, tests/vulkan: with ``k = 10`` of 30 layers llama.cpp holds the output and 9
layers' weights and KV on the GPU.)
"""

from __future__ import annotations

from dataclasses import dataclass

from localr1.errors import UsageError
from localr1.fit.arch import Architecture
from localr1.fit.quant_rules import has_rules, planned_types, tensor_bytes
from localr1.fit.quant_types import BITS_PER_WEIGHT
from localr1.models.gguf_info import ggml_type_name

# MLA's working set beside the attention, in floats per token of a micro-batch: an upper envelope of
# llama.cpp's no_alloc compute buffers over 40 deepseek2 shapes (8-128 heads, n_embd 1024-7168; CPU backend,
# flash attention), R1's own shape within 0.3%. Its allocator packs tensors differently from shape to shape
# (the buffer is not even monotone in the sizes), so the envelope is up to ~70% over for small shapes.
MLA_FLOATS_PER_HEAD = 1378
MLA_FLOATS_PER_EMBD = 3.91
MLA_FLOATS_FIXED = 6050
# The routed experts' intermediates while the attention mask is still alive (every layer but the last):
# the same kind of envelope over 27 shapes (2-8 experts used of 64, expert_ff 512-2048, n_embd 1024-4096).
MOE_FLOATS_PER_EXPERT_FF = 1.61
MOE_FLOATS_PER_EXPERT_EMBD = 1.06
MOE_FLOATS_PER_EMBD = 1.52
MOE_FLOATS_FIXED = 21832


@dataclass(frozen=True)
class WeightLayout:
    """Bytes of weights: per repeating layer, plus embeddings and output."""

    layers: tuple[int, ...]
    embd: int
    output: int  # output.weight + output_norm (0 when tied to the embeddings ... then embd is duplicated)
    expert_layers: tuple[int, ...] = ()  # per layer, the routed-expert part of ``layers`` (MoE)
    # bytes per tensor type of everything but the token embeddings (a token reads one row of those): the CPU
    # kernels' speed differs per type (engine/cpu_speed.py), so a Q4_K_M file's Q6_K share runs at Q6_K's
    mix: tuple[tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        return sum(self.layers) + self.embd + self.output

    @classmethod
    def from_arch(cls, arch: Architecture, quant: str) -> WeightLayout:
        """Exact for every standard quant: each tensor at the type llama.cpp's quantizer gives it (quant_rules).
        A publisher's own mix (UD-*) by its measured bits per weight, to be scaled to its listed size."""
        types = planned_types(arch, quant) if has_rules(quant) else None
        bpw = BITS_PER_WEIGHT.get(quant.upper())
        if types is None and bpw is None:
            raise ValueError(f"unknown quant {quant}")
        layers = [0] * arch.n_layer
        experts = [0] * arch.n_layer
        embd = output = 0
        mix: dict[str, int] = {}
        for t in arch.tensors():
            if types is not None:
                nbytes = tensor_bytes(types[t.name], t.shape)
            else:
                nbytes = t.n_elements * 4 if len(t.shape) == 1 else int(t.n_elements * bpw / 8)
            if t.role != "embd":
                kind = types[t.name] if types is not None else quant.upper()
                mix[kind] = mix.get(kind, 0) + nbytes
            if t.layer is not None:
                layers[t.layer] += nbytes
                if t.role == "exps":
                    experts[t.layer] += nbytes
            elif t.role == "embd":
                embd += nbytes
            else:
                output += nbytes
        if arch.tied_embeddings:
            output += embd  # llama.cpp duplicates the embeddings as the output matrix on the GPU
        return cls(tuple(layers), embd, output, tuple(experts), tuple(sorted(mix.items())))

    def scaled_to(self, total: int) -> WeightLayout:
        """The same layout with every part scaled so that the whole is ``total`` bytes (a size the Hub
        lists for the file, truer than bits-per-weight arithmetic for mixed quants)."""
        if self.total <= 0:
            return self
        f = total / self.total
        return WeightLayout(
            tuple(int(b * f) for b in self.layers),
            int(self.embd * f),
            int(self.output * f),
            tuple(int(b * f) for b in self.expert_layers),
            tuple((k, int(b * f)) for k, b in self.mix),
        )

    @classmethod
    def from_gguf(cls, tensors, n_layer: int) -> WeightLayout:
        """Exact sizes from a GGUF header's tensor table (``gguf_info.TensorInfo`` items)."""
        layers = [0] * n_layer
        experts = [0] * n_layer
        embd = output = 0
        tied = True
        mix: dict[str, int] = {}
        for t in tensors:
            name = t.name
            if not name.startswith("token_embd."):
                kind = ggml_type_name(t.ggml_type)
                mix[kind] = mix.get(kind, 0) + t.nbytes
            if name.startswith("blk."):
                idx = int(name.split(".")[1])
                if idx < n_layer:  # (extra blocks, e.g. multi-token prediction, are not loaded)
                    layers[idx] += t.nbytes
                    if "_exps." in name:
                        experts[idx] += t.nbytes
            elif name.startswith("token_embd."):
                embd += t.nbytes
            else:
                output += t.nbytes
                tied = tied and name != "output.weight"
        if tied:
            output += embd
        return cls(tuple(layers), embd, output, tuple(experts), tuple(sorted(mix.items())))


@dataclass(frozen=True)
class MemoryEstimate:
    gpu_weights: int = 0
    gpu_kv: int = 0
    gpu_compute: int = 0
    cpu_weights: int = 0
    cpu_kv: int = 0
    cpu_compute: int = 0
    output: int = 0
    kv_total: int = 0
    compute_total: int = 0

    @property
    def gpu_total(self) -> int:
        return self.gpu_weights + self.gpu_kv + self.gpu_compute

    @property
    def cpu_total(self) -> int:
        return self.cpu_weights + self.cpu_kv + self.cpu_compute + self.output


# KV cache types llama.cpp can keep (-ctk/-ctv): ggml type id and bytes per element (a q8_0 block holds 32
# values in 34 bytes, a q4_0 block in 18). A quantized V cache needs flash attention.
KV_TYPES: dict[str, tuple[int, float]] = {"f16": (1, 2.0), "q8_0": (8, 34 / 32), "q4_0": (2, 18 / 32)}


def check_kv_type(kv_type: str, name: str = "--kv-type") -> str:
    """``kv_type`` if llama.cpp can keep a KV cache as it, else a UsageError naming where it came from."""

    if kv_type not in KV_TYPES:
        raise UsageError(f"{name} must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")
    return kv_type


def kv_type_bytes(kv_type: str) -> float:
    return KV_TYPES[check_kv_type(kv_type)][1]


def kv_type_fits(arch: Architecture, kv_type: str) -> bool:
    """Whether llama.cpp can keep this model's KV cache as ``kv_type``: a quantized type's 32-value blocks
    must divide each head's K and V rows."""
    if kv_type == "f16":
        return True
    rows = (arch.kv_lora_rank + arch.rope_dim,) if arch.is_mla else (arch.head_dim,)
    return all(r > 0 and r % 32 == 0 for r in rows)


def kv_bytes_per_layer_token(arch: Architecture, kv_type_bytes: float = 2.0) -> float:
    if arch.is_mla:
        return (arch.kv_lora_rank + arch.rope_dim) * kv_type_bytes
    return 2 * arch.n_head_kv * arch.head_dim * kv_type_bytes


def kv_cache_bytes(arch: Architecture, n_ctx: int, n_layers: int | None = None, kv_type: str = "f16") -> int:
    layers = arch.n_layer if n_layers is None else n_layers
    return int(layers * n_ctx * kv_bytes_per_layer_token(arch, kv_type_bytes(kv_type)))


def mask_bytes(n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """The attention mask of a micro-batch: n_ctx x n_ubatch, f16 with flash attention, f32 without."""
    return n_ctx * n_ubatch * (2 if flash_attn else 4)


def compute_bytes(
    arch: Architecture, n_ctx: int, *, n_ubatch: int = 512, flash_attn: bool = True, device: bool = False
) -> int:
    """The compute buffer llama.cpp reserves for a full micro-batch (the largest graph it will run); ``device``:
    the GPU's, whose graph does not hold the micro-batch's input embeddings (the host's buffer does)."""
    u = n_ubatch
    logits = 4 * u * (arch.n_vocab + 2 * arch.n_embd)
    if arch.is_mla:
        # Three peaks: the micro-batch's logits beside the last layer's MoE intermediates; the attention (mask
        # or scores) beside MLA's working set; the routed experts' intermediates beside the mask, which every
        # layer but the last still needs. The last two are envelopes fitted to llama.cpp (constants above).
        logits = 4 * u * (arch.n_vocab + 2 * arch.n_embd + 2 * arch.n_expert_used * arch.expert_ff)
        mla = 4 * u * (arch.n_head * MLA_FLOATS_PER_HEAD + arch.n_embd * MLA_FLOATS_PER_EMBD + MLA_FLOATS_FIXED)
        # without flash attention: the f32 scores of every head, the f32 mask, and one more n_ctx-wide f32 row
        # per token (seen with few heads: 16 heads at 32k need it, 128 do not)
        attn = mla + (2 * u * n_ctx if flash_attn else 4 * u * n_ctx * (arch.n_head + 2))
        used = arch.n_expert_used
        moe = 4 * u * (
            used * arch.expert_ff * MOE_FLOATS_PER_EXPERT_FF
            + used * arch.n_embd * MOE_FLOATS_PER_EXPERT_EMBD
            + arch.n_embd * MOE_FLOATS_PER_EMBD
            + MOE_FLOATS_FIXED
        ) + mask_bytes(n_ctx, u, flash_attn)
        return int(max(logits, attn, moe))
    kv_dim = arch.n_head_kv * arch.head_dim
    rest = 4 * u * (5 * arch.n_embd + 2 * kv_dim)
    mask = mask_bytes(n_ctx, u, flash_attn)
    if flash_attn:
        attn = mask + rest  # the f16 mask; the attention itself is tiled
    else:
        attn = 4 * u * n_ctx * arch.n_head + mask + rest  # scores, softmax in place, f32 mask
    # the feed-forward peak (gate, up and their product beside the inputs), which passes the logits when the
    # vocabulary is small against n_ff (not for R1's 128k-152k vocabularies): measured on CPU and Vulkan
    ffn = 4 * u * (3 * arch.n_ff + (2 if device else 4) * arch.n_embd) + mask
    return int(max(logits, attn, ffn))


def expert_staging_bytes(weights: WeightLayout, cpu_expert_layers) -> int:
    """GPU room for routed experts kept in RAM: for a prompt, llama.cpp runs their matrix products on the GPU
    too (op offload), copying one expert tensor (a layer's up, gate or down: a third of its routed experts)
    into the GPU's compute buffer at a time. Measured on a real Vulkan device for a DeepSeek-V2-Lite shape:
    64-82 MiB more than with every expert on the GPU, against 99 MiB for one tensor (tests/vulkan)."""
    layers = [weights.expert_layers[i] for i in cpu_expert_layers if i < len(weights.expert_layers)]
    return max(layers) // 3 if layers else 0


def expert_host_compute_bytes(arch: Architecture, n_ubatch: int = 512) -> int:
    """The host's extra compute buffer when routed experts run on the CPU: their intermediates for a micro-batch
    (up and gate for each token's experts). Within 7% of llama.cpp's Vulkan figures for a DeepSeek-V2-Lite
    shape at 4k (over at 32k, where the mask already counts)."""
    return 4 * n_ubatch * 2 * arch.n_expert_used * arch.expert_ff if arch.is_moe else 0


def gpu_repeating_layers(n_layer: int, n_gpu_layers: int) -> int:
    """How many repeating layers llama.cpp puts on the GPU for ``n_gpu_layers`` (-1: all): the output layer
    takes the first of them."""
    k = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    return max(0, k - 1)


def estimate(
    arch: Architecture,
    weights: WeightLayout,
    n_ctx: int,
    n_gpu_layers: int,
    *,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    kv_type: str = "f16",
) -> MemoryEstimate:
    """Memory per device for ``n_gpu_layers`` offloaded (-1 or > n_layer: everything), with the KV cache
    kept as ``kv_type`` (f16, q8_0 or q4_0)."""
    n_layer = arch.n_layer
    gpu_layers = gpu_repeating_layers(n_layer, n_gpu_layers)
    first_gpu = n_layer - gpu_layers
    gpu_w = sum(weights.layers[first_gpu:]) + (weights.output if n_gpu_layers != 0 else 0)
    cpu_w = weights.total - gpu_w
    kv_total = kv_cache_bytes(arch, n_ctx, kv_type=kv_type)
    kv_gpu = kv_cache_bytes(arch, n_ctx, gpu_layers, kv_type=kv_type)
    compute = compute_bytes(arch, n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn)
    output = 4 * arch.n_vocab
    if n_gpu_layers == 0:
        gpu_compute, cpu_compute = 0, compute
    else:
        # the graph runs on the GPU; the CPU keeps a host buffer for the inputs (the embeddings of a
        # micro-batch, twice) and the attention mask (n_ctx x n_ubatch, f16 with flash attention, f32 without),
        # as measured per device on a real ggml device (tests/vulkan)
        mask = mask_bytes(n_ctx, n_ubatch, flash_attn)
        gpu_compute = compute_bytes(arch, n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn, device=True)
        cpu_compute = 4 * n_ubatch * arch.n_embd * 2 + mask
        if gpu_layers < n_layer and weights.layers:
            # partial offload: llama.cpp runs the CPU layers' big matrix products of a prompt on the GPU too (op
            # offload), copying their weights into the GPU's compute buffer first. How much of a layer it holds
            # at once varies (0.3 to 1.25 of one in llama.cpp's Vulkan figures, tests/vulkan): room for 1.5.
            gpu_compute += int(1.5 * max(weights.layers[:first_gpu]))
    return MemoryEstimate(
        gpu_weights=gpu_w,
        gpu_kv=kv_gpu,
        gpu_compute=gpu_compute,
        cpu_weights=cpu_w,
        cpu_kv=kv_total - kv_gpu,
        cpu_compute=cpu_compute,
        output=output,
        kv_total=kv_total,
        compute_total=compute,
    )
