"""Tiny Hugging Face checkpoints for the converter tests: random weights made by transformers, and a small
byte-level BPE tokenizer trained with `tokenizers` using the real split regexes of each R1 family.

Needs torch, transformers and tokenizers (the dev extras); tests import this only after importorskip.
"""

from __future__ import annotations

import json
from pathlib import Path

from localr1.models.convert.vocab import _DEEPSEEK3_REGEXES, _LLAMA3_REGEX, _QWEN2_REGEX

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Prove that sqrt(2) is irrational.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i ** 2)\n",
    r"Let $x^2 + y^2 = z^2$. Then \frac{a}{b} = \sqrt{2} and \boxed{42}.",
    "Ünïcödé: naïve café, Straße, Привет мир, 你好世界, こんにちは, 🚀🦙 emoji.",
    "I've been told he's there, 'RE you sure? We'll see. 1234567 3.14159 1e-9",
    "<think>\nLet me reason step by step.\n</think>\nThe answer is 4.",
] * 20

# family -> (split regexes, special tokens, chat template, bos, eos)
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% else %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
R1_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
# transformers 5 loads any qwen2-type tokenizer as Qwen2Tokenizer, which adds <|endoftext|> when the vocab lacks
# it (the R1 Qwen distills do): llama.cpp's converter then writes a token tokenizer.json does not have. The test
# vocabularies carry it, as Qwen 2.5's own do, so both converters see the same tokens.
QWEN_SPECIALS = [*R1_SPECIALS, "<|endoftext|>"]
FAMILIES = {
    "qwen2": ((_QWEN2_REGEX,), QWEN_SPECIALS, R1_TEMPLATE),
    "llama": ((_LLAMA3_REGEX,), R1_SPECIALS, R1_TEMPLATE),
    "qwen3": ((_QWEN2_REGEX,), ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
              "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"),
    "deepseek3": (_DEEPSEEK3_REGEXES, QWEN_SPECIALS, R1_TEMPLATE),
}  # fmt: skip


def train_tokenizer(folder: Path, family: str, vocab_size: int = 400):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    regexes, specials, template = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>", "</think>"])  # added, not special: as in the R1 tokenizers
    bos, eos = (specials[0], specials[1]) if family != "qwen3" else (None, "<|im_end|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.chat_template = template
    fast.save_pretrained(folder)
    return fast


def make_checkpoint(folder: Path, family: str, *, dtype: str = "float32", seed: int = 0, tied: bool = False) -> Path:
    """A 2-layer model (n_embd 256, so the K-quants apply) of the family's architecture with random weights, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(folder, family)
    n_vocab = len(tok) + 7  # padded past the tokenizer, as the real configs are (152064 vs 151665)
    common = dict(
        vocab_size=n_vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    if family in ("qwen2", "deepseek3"):
        config, cls = Qwen2Config(**common, rope_theta=10000.0), Qwen2ForCausalLM
    elif family == "qwen3":
        config, cls = Qwen3Config(**common, head_dim=64, rope_theta=1000000.0), Qwen3ForCausalLM
    else:
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}  # fmt: skip
        config, cls = LlamaConfig(**common, rope_scaling=rope, rope_theta=500000.0), LlamaForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # larger than the init's 0.02 so the logits spread, and biases non-zero
        for p in model.parameters():
            p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(1.0)
    model.to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny test checkpoint\n", encoding="utf-8")
    return folder


def reference_logits(folder: Path, token_ids: list[int]):
    """Logits of every position from the PyTorch forward pass, in float64 of float32 math."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].double().numpy()


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))
