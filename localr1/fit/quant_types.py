"""Every quant type localr1 knows, in one table: llama.cpp's file-type id, bits per weight, the quality it
keeps, and whether it needs an importance matrix. The planner, the memory model, the header reader and
``quantize`` all read their figures from here.

Bits per weight are for listing and for a publisher's own mixes: the planner sizes every standard quant
exactly, tensor by tensor, with llama.cpp's quantizer rules (``quant_rules``), and uses bits per weight only
for the dynamic MoE quants (``UD-*``, measured from the published file sizes of DeepSeek-R1 671B). The other
``measured`` figures come from llama-quantize's own size figures (Llama-3-8B); the rest are llama.cpp's
nominal figures.
Quality: the expected share of the original weights' benchmark score (llama.cpp's perplexity figures;
the "UD" dynamic quants keep the sensitive layers at higher precision); None where not known.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quant:
    name: str
    ftype: int | None  # llama.cpp's enum llama_ftype; None for mixes only a publisher makes (UD-*)
    bpw: float
    measured: bool = False
    quality: float | None = None
    needs_imatrix: bool = False


QUANTS: tuple[Quant, ...] = (
    Quant("F32", 0, 32.0, True),
    Quant("F16", 1, 16.0, True, 1.0),
    Quant("BF16", 32, 16.0, True, 1.0),
    Quant("Q8_0", 7, 8.50, True, 1.0),
    Quant("Q6_K", 18, 6.57, True, 0.995),
    Quant("Q5_K_M", 17, 5.70, True, 0.99),
    Quant("Q5_K_S", 16, 5.57, True),
    Quant("Q5_1", 9, 6.0),
    Quant("Q5_0", 8, 5.50, True),
    Quant("Q4_K_M", 15, 4.89, True, 0.975),
    Quant("Q4_K_S", 14, 4.67, True),
    Quant("Q4_1", 3, 5.00, True),
    Quant("Q4_0", 2, 4.55, True),
    Quant("IQ4_XS", 30, 4.42, True),
    Quant("IQ4_NL", 25, 4.5),
    Quant("Q3_K_L", 13, 4.30, True),
    Quant("Q3_K_M", 12, 4.00, True, 0.93),
    Quant("Q3_K_S", 11, 3.64, True),
    Quant("IQ3_M", 27, 3.66),
    Quant("IQ3_S", 26, 3.44),
    Quant("IQ3_XS", 22, 3.3),
    Quant("IQ3_XXS", 23, 3.06),
    Quant("Q2_K", 10, 3.17, True, 0.85),
    Quant("Q2_K_S", 21, 2.96),
    Quant("IQ2_M", 29, 2.7),
    Quant("IQ2_S", 28, 2.5, needs_imatrix=True),
    Quant("IQ2_XS", 20, 2.31, needs_imatrix=True),
    Quant("IQ2_XXS", 19, 2.06, needs_imatrix=True),
    Quant("IQ1_M", 31, 1.75, needs_imatrix=True),
    Quant("IQ1_S", 24, 1.56, needs_imatrix=True),
    Quant("TQ2_0", 37, 2.06),
    Quant("TQ1_0", 36, 1.69),
    Quant("MXFP4_MOE", 38, 4.25),
    Quant("UD-Q2_K_XL", None, 2.53, True, 0.97),
    Quant("UD-IQ2_XXS", None, 2.18, True, 0.95),
    Quant("UD-IQ1_M", None, 1.88, True, 0.93),
    Quant("UD-IQ1_S", None, 1.56, True, 0.91),
)

BY_NAME: dict[str, Quant] = {q.name: q for q in QUANTS}
# views for the modules that need one column
FILE_TYPE_NAMES: dict[int, str] = {
    q.ftype: q.name for q in sorted(QUANTS, key=lambda q: q.ftype or 0) if q.ftype is not None
}
BITS_PER_WEIGHT: dict[str, float] = {q.name: q.bpw for q in QUANTS if q.measured}
QUANT_QUALITY: dict[str, float] = {q.name: q.quality for q in QUANTS if q.quality is not None}
NEEDS_IMATRIX: frozenset[str] = frozenset(q.name for q in QUANTS if q.needs_imatrix)
