"""The tokenizer of a checkpoint, as llama.cpp's converter writes it into a GGUF.

Byte-level BPE only (the tokenizer of every R1 build: Qwen 2.5, Llama 3 and Qwen 3). The token list and
types follow llama.cpp's ``get_vocab_base``; merges, special token ids, add-BOS flags and the chat template
come from the ``gguf`` package's ``SpecialVocab``, the same code llama.cpp uses. The pre-tokenizer name
(``tokenizer.ggml.pre``) is found as llama.cpp finds it, by hashing the token ids of a fixed text against its
table (``pretokenizers.json``); a tokenizer missing from that table (a fine-tune that retrained it, a test
tokenizer) is named by its split regexes instead, when they are ones llama.cpp implements.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from localr1.errors import InvalidModelFileError, UsageError

# Imported inside the functions that use them: tokenizers (heavy to import, and not needed by every command); localr1
# modules only some calls need.

# gguf.TokenType values
NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4

_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_DEEPSEEK3_REGEXES = (
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
)
# Split regexes of a tokenizer.json -> the llama.cpp pre-tokenizer that applies exactly those (llama-vocab.cpp).
KNOWN_SPLITS: dict[tuple[str, ...], str] = {
    (_QWEN2_REGEX,): "qwen2",
    (_LLAMA3_REGEX,): "llama-bpe",
    _DEEPSEEK3_REGEXES: "deepseek-v3",
}


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pre: str  # tokenizer.ggml.pre
    pre_from: str  # "hash" or "regex": how the name was found


@cache
def _table() -> dict:
    return json.loads((Path(__file__).with_name("pretokenizers.json")).read_text(encoding="utf-8"))


def looks_special(token: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens some models forget to mark as special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _split_regexes(pre_tokenizer: dict | None) -> tuple[str, ...]:
    if not pre_tokenizer:
        return ()
    parts = (
        pre_tokenizer.get("pretokenizers", [pre_tokenizer])
        if pre_tokenizer.get("type") == "Sequence"
        else [pre_tokenizer]
    )
    return tuple(
        p["pattern"]["Regex"] for p in parts if p.get("type") == "Split" and "Regex" in (p.get("pattern") or {})
    )


def tokenizer_json(folder: Path) -> dict:
    from localr1.models.convert.checkpoint import read_json

    data = read_json(
        folder / "tokenizer.json",
        missing=f"{folder} has no tokenizer.json",
        hint="Download the tokenizer files too (tokenizer.json, tokenizer_config.json).",
    )
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if not isinstance(model, dict) or not isinstance(decoder, (dict, list)):
        raise InvalidModelFileError(
            f"{folder / 'tokenizer.json'} is malformed: its model and decoder must be objects",
            hint="Download the tokenizer files again.",
        )
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps([data.get("pre_tokenizer"), decoder]):
        raise UsageError(
            f"the tokenizer in {folder} is not a byte-level BPE tokenizer ({model.get('type', '?')})",
            hint="localr1 converts the tokenizers of the R1 builds (Qwen 2.5, Llama 3, Qwen 3).",
        )
    if (folder / "tokenizer.model").is_file():
        raise UsageError(
            f"{folder} has a SentencePiece tokenizer.model, which llama.cpp would convert as a SentencePiece vocab",
            hint="localr1 converts byte-level BPE tokenizers only; use llama.cpp's convert_hf_to_gguf.py.",
        )
    return data


def pre_tokenizer_name(tokenizer, data: dict) -> tuple[str, str]:
    table = _table()
    chkhsh = hashlib.sha256(str(tokenizer.encode(table["chktxt"]).ids).encode()).hexdigest()
    if (entry := table["hashes"].get(chkhsh)) is not None:
        return entry["name"], "hash"
    name = KNOWN_SPLITS.get(_split_regexes(data.get("pre_tokenizer")))
    if name is None:
        raise UsageError(
            "llama.cpp does not know this tokenizer's pre-tokenizer (its regexes and its hash are both new)",
            hint="Only tokenizers of the Qwen 2.5, Llama 3, Qwen 3 and DeepSeek families can be converted.",
        )
    if name == "qwen2" and "<｜begin▁of▁sentence｜>" in tokenizer.get_vocab(with_added_tokens=True):
        name = "deepseek-r1-qwen"  # the R1 distills of Qwen: Qwen's regex, DeepSeek's special tokens
    return name, "regex"


def read_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    """Tokens and token types, padded to the model's vocab_size as llama.cpp pads them."""
    from tokenizers import Tokenizer

    data = tokenizer_json(folder)
    try:
        tok = Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # the Rust side reports any malformed field as a plain Exception
        raise InvalidModelFileError(f"{folder / 'tokenizer.json'} could not be read: {e}") from e
    vocab = tok.get_vocab(with_added_tokens=True)
    size = vocab_size if vocab_size is not None else len(vocab)
    if vocab and max(vocab.values()) >= size:
        raise InvalidModelFileError(
            f"the tokenizer has token ids up to {max(vocab.values())}, but config.json says vocab_size={size}"
        )
    pre, pre_from = pre_tokenizer_name(tok, data)
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()
    added_contents = {a.content for a in added.values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if token in added_contents:
            info = added.get(i)
            if info is not None and not info.normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if (info is not None and info.special) or looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return Vocab(tokens, types, pre, pre_from)
