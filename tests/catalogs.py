"""Catalog entries (models.toml text) for tests: a tiny llama-shaped model under any name and repo."""

from __future__ import annotations


def tiny_entry(name: str, gguf_repo: str, files: dict[str, str], *, params_b: float = 0.001) -> str:
    """One ``[models."NAME"]`` table: a 1-layer, 64-wide llama with a 100-token vocabulary."""
    lines = [
        f'[models."{name}"]',
        'title = "Tiny test model"',
        'family = "distill"',
        'architecture = "llama"',
        f"params_b = {params_b}",
        'source_repo = "test/tiny"',
        f'gguf_repo = "{gguf_repo}"',
        f'default_quant = "{next(iter(files))}"',
        'license = "MIT"',
        "aime2024 = 99.0",
        f'[models."{name}".arch]',
        'arch = "llama"',
        "n_layer = 1",
        "n_embd = 64",
        "n_ff = 128",
        "n_head = 4",
        "n_head_kv = 2",
        "head_dim = 16",
        "n_vocab = 100",
        "ctx_train = 2048",
        f'[models."{name}".files]',
        *(f'{quant} = "{file}"' for quant, file in files.items()),
    ]
    return "\n".join(lines) + "\n"
