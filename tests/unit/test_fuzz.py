"""Fuzzing with Hypothesis: every reader of untrusted bytes returns a result or raises a LocalR1Error.

Targets: the GGUF header reader (with the hyperparameter checks), the safetensors header reader, config,
catalog and conversation loading, and the chat-template renderer. Never another exception (a crash in
disguise: "internal error"), never longer than the deadline.

The default run gives each target a fixed budget (``FUZZ_EXAMPLES``, 2,000 by default, derandomized so CI
sees the same inputs every time); ``pytest -m slow tests/unit/test_fuzz.py`` runs a longer, random
campaign (``LOCALR1_FUZZ_EXAMPLES`` sets its size).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localr1.errors import LocalR1Error

FUZZ_EXAMPLES = 2000
SLOW_EXAMPLES = int(os.environ.get("LOCALR1_FUZZ_EXAMPLES", "50000"))

_common = dict(
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    database=None,
)
FIXED = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, **_common)
LONG = settings(max_examples=SLOW_EXAMPLES, **_common)


def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="localr1-fuzz-"))
    return folder


SCRATCH = _scratch()


def _write(name: str, data: bytes) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


# --- GGUF ------------------------------------------------------------------------------------------------
def _seed_gguf() -> bytes:
    import gguf
    import numpy as np

    path = SCRATCH / "seed.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("seed")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_feed_forward_length(128)
    writer.add_rope_freq_base(10000.0)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


SEED_GGUF = _seed_gguf()


@st.composite
def mutated(draw, seed: bytes, limit: int | None = None):
    """The seed with a few bytes overwritten, inserted, deleted, or the tail cut (headers, mostly)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["set", "insert", "delete", "int", "truncate"]))
        pos = draw(st.integers(0, min(len(data), limit or len(data)) - 1))
        if kind == "set":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "int":  # a plausible-looking count or length, where one lies
            value = draw(st.sampled_from([0, 1, 2, 255, 600, 2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1]))
            data[pos : pos + 8] = struct.pack("<Q", value % 2**64)
        else:
            del data[pos:]
    return bytes(data)


def _read_gguf(data: bytes) -> None:
    from localr1.models.gguf_info import check_hparams, read_gguf

    path = _write("fuzz.gguf", data)
    with contextlib.suppress(LocalR1Error):
        check_hparams(read_gguf(path))


@FIXED
@given(mutated(SEED_GGUF, limit=1024))
def test_gguf_reader(data):
    _read_gguf(data)


@FIXED
@given(st.binary(max_size=512).map(lambda b: b"GGUF" + struct.pack("<I", 3) + b))
def test_gguf_reader_random_headers(data):
    _read_gguf(data)


@pytest.mark.slow
@LONG
@given(st.one_of(mutated(SEED_GGUF), st.binary(max_size=4096).map(lambda b: b"GGUF\x03\x00\x00\x00" + b)))
def test_gguf_reader_long(data):
    _read_gguf(data)


# --- safetensors ---------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
TENSOR_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F8_E4M3"]) | JSON,
        "shape": st.lists(st.integers(-2, 2**40), max_size=5) | JSON,
        "data_offsets": st.lists(st.integers(-2, 2**40), min_size=2, max_size=2) | JSON,
    }
)


@st.composite
def safetensors_files(draw):
    header = draw(st.dictionaries(st.text(max_size=12), TENSOR_ENTRY | JSON, max_size=5))
    raw = json.dumps(header).encode()
    declared = draw(st.sampled_from([len(raw), len(raw) + 1, 0, 2**63, len(raw) - 1]))
    body = draw(st.binary(max_size=64))
    return struct.pack("<Q", max(declared, 0) % 2**64) + raw + body


def _read_safetensors(data: bytes) -> None:
    from localr1.models.convert.checkpoint import read_safetensors_header

    with contextlib.suppress(LocalR1Error):
        read_safetensors_header(_write("model.safetensors", data))


@FIXED
@given(safetensors_files() | st.binary(max_size=128))
def test_safetensors_header_reader(data):
    _read_safetensors(data)


@pytest.mark.slow
@LONG
@given(safetensors_files() | st.binary(max_size=1024))
def test_safetensors_header_reader_long(data):
    _read_safetensors(data)


# --- config.json of a checkpoint -------------------------------------------------------------------------
CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "vocab_size", "rope_theta", "rope_scaling", "head_dim",
               "num_attention_heads", "max_position_embeddings", "rms_norm_eps", "architectures"]  # fmt: skip


@FIXED
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=6), JSON, max_size=8))
def test_checkpoint_config(config):
    from localr1.models.convert.checkpoint import check_config

    with contextlib.suppress(LocalR1Error):
        check_config(config, Path("config.json"))


# --- config.toml, models.toml, saved conversations -----------------------------------------------------
TOML_PIECES = st.sampled_from(
    [
        "threads = ",
        "ctx = ",
        "gpu_layers = ",
        "default_model = ",
        "hide_thinking = ",
        '[models."x"]\n',
        "title = ",
        "gguf_repo = ",
        '"../a"',
        '"a/b"',
        "-3",
        "65536",
        "1e9",
        "nan",
        "inf",
        "true",
        '"\\u0000"',
        "\n",
        "[",
        "]",
        "{",
        "}",
        ".",
        "=",
        '"',
        "'",
        "#",
        " ",
        "0",
        '[models."x".files]\n',
        'Q8_0 = "a.gguf"',
        "[[",
        "]]",
    ]  # fmt: skip
)
TOML_TEXT = st.lists(TOML_PIECES, max_size=20).map("".join) | st.text(max_size=64)


@FIXED
@given(TOML_TEXT | st.binary(max_size=64))
def test_config_loading(text):
    from localr1.config import load_config

    path = _write("config.toml", text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    with contextlib.suppress(LocalR1Error):
        load_config(path)


@FIXED
@given(TOML_TEXT)
def test_catalog_loading(text):
    from localr1.models.catalog import parse_catalog

    with contextlib.suppress(LocalR1Error):
        parse_catalog(text, "fuzz")


def _valid_conversation() -> dict:
    from dataclasses import asdict

    from localr1.text.conversations import Conversation

    conv = Conversation(id="0" * 32, title="t")
    conv.add_turn("hello").answer = "hi"
    return asdict(conv)


CONV = st.fixed_dictionaries(
    {},
    optional={k: JSON | st.just(v) for k, v in _valid_conversation().items()}
    | {"turns": st.lists(st.dictionaries(st.sampled_from(["user", "answer", "tokens", "x"]), JSON), max_size=3)},
)


@FIXED
@given(CONV | JSON)
def test_conversation_loading(raw):
    from localr1.text.conversations import ConversationStore

    store = ConversationStore(SCRATCH / "chats")
    store.root.mkdir(exist_ok=True)
    (store.root / f"{'a' * 32}.json").write_text(json.dumps(raw))
    try:
        conv = store.load("a" * 32)
    except LocalR1Error:
        return
    conv.messages("next")  # what a loaded conversation is used for
    conv.to_markdown()
    assert [c.id for c in store.list()] == ["a" * 32]


# --- chat templates --------------------------------------------------------------------------------------
TEMPLATE_PIECES = st.sampled_from(
    [
        "{{ ",
        " }}",
        "{% ",
        " %}",
        "for m in messages",
        "endfor",
        "if ",
        "endif",
        "else",
        "m['content']",
        "m.role",
        "messages[0]",
        "bos_token",
        "'x' * 1000",
        " * ",
        " ** ",
        "range(100000)",
        "loop.index",
        "raise_exception('no')",
        "strftime_now('%Y')",
        "| length",
        "| join(',')",
        "[]",
        "{}",
        "(",
        ")",
        "1",
        "99999999",
        "-1",
        "none",
        "add_generation_prompt",
        "set x = ",
        "x",
        "macro f()",
        "endmacro",
        "f()",
        "namespace(a=1)",
        "__class__",
        "__subclasses__()",
        ".mro()",
        "text",
        " ",
        "\n",
        "{#",
        "#}",
        "'",
        '"',
        "}}",
        "%}",
        "recursive",
        "loop(m)",
        "cycler",
        "joiner()",
        "lipsum()",
    ]  # fmt: skip
)


@FIXED
@given(st.lists(TEMPLATE_PIECES, max_size=24).map("".join) | st.text(max_size=48))
def test_template_renderer(template):
    from localr1.text.prompt import chat_format_for, render, user_turn

    with contextlib.suppress(LocalR1Error):
        render(user_turn("hi", system="be brief"), chat_format_for(template, name="fuzz"))


# --- server request bodies -------------------------------------------------------------------------------
_REQUEST_KEYS = [
    "model", "messages", "prompt", "stream", "stream_options", "temperature", "top_p", "top_k", "min_p", "seed",
    "stop", "n", "max_tokens", "max_completion_tokens", "logit_bias", "logprobs", "tools", "response_format",
    "reasoning_format", "grammar", "options", "think", "format", "system", "raw", "keep_alive", "role",
    "content", "num_predict", "num_ctx", "include_usage",
]  # fmt: skip
REQUEST_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(_REQUEST_KEYS),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_REQUEST_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=24,
)
REQUEST_BODY = st.dictionaries(st.sampled_from(_REQUEST_KEYS), REQUEST_JSON, max_size=6)


@FIXED
@given(REQUEST_BODY, st.sampled_from(["openai_chat", "openai_completion", "ollama_chat", "ollama_generate"]))
def test_server_request_bodies(body, kind):
    """Any JSON object gives a Generation (whose sampling then validates) or a RequestError, nothing else."""
    from localr1.server import protocol

    parse = getattr(protocol, kind)
    try:
        gen = parse(body) if kind.startswith("openai") else parse(body, 4096)
    except protocol.RequestError as exc:
        assert 400 <= exc.status < 500
        return
    with contextlib.suppress(LocalR1Error):
        gen.sampling.validate()
