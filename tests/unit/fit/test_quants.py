"""The one quant table agrees with llama.cpp's own enum (through the gguf package) and is self-consistent."""

from __future__ import annotations

import gguf

from localr1.fit.quant_types import BITS_PER_WEIGHT, BY_NAME, FILE_TYPE_NAMES, QUANT_QUALITY, QUANTS


def test_file_type_ids_are_llama_cpps():
    for q in QUANTS:
        if q.ftype is not None:
            assert gguf.LlamaFileType(q.ftype).name.split("_", 1)[1] == q.name, q.name


def test_views_come_from_the_table():
    assert len(BY_NAME) == len(QUANTS)  # one row per name
    assert set(FILE_TYPE_NAMES.values()) == {q.name for q in QUANTS if q.ftype is not None}
    assert all(BY_NAME[n].measured for n in BITS_PER_WEIGHT)
    assert all(0 < v <= 1 for v in QUANT_QUALITY.values())
    # bits per weight fall as the names say: a K-quant's size class orders its bits
    assert BY_NAME["Q8_0"].bpw > BY_NAME["Q6_K"].bpw > BY_NAME["Q5_K_M"].bpw > BY_NAME["Q4_K_M"].bpw
    assert BY_NAME["Q4_K_M"].bpw > BY_NAME["Q3_K_M"].bpw > BY_NAME["Q2_K"].bpw > BY_NAME["IQ1_S"].bpw
