"""The CPU step probe: a zero-weight model in a distill's shape, written sparse, decoded through llama.cpp."""

from __future__ import annotations

import pytest

from localr1.engine import step_probe
from localr1.fit.quant_rules import planned_types
from localr1.models.gguf_info import GGML_TYPES, read_gguf


def test_the_probe_model_has_q4_k_m_types_by_llama_cpps_rules_and_takes_no_disk(tmp_path):
    path = step_probe.write_probe_model(tmp_path / "probe.gguf")
    info = read_gguf(path, check_data=True)  # every tensor's data lies inside the file
    types = planned_types(step_probe.PROBE, "Q4_K_M")
    assert {t.name: GGML_TYPES[t.ggml_type][0] for t in info.tensors} == types
    assert path.stat().st_size > 512 << 20  # beyond the last-level cache of the CPUs localr1 runs on
    assert path.stat().st_blocks * 512 < 4 << 20  # sparse: the weights are a hole of zeros
    read = step_probe.step_read()
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert sum(read.values()) == sum(t.nbytes for t in info.tensors) - embd.nbytes


@pytest.mark.integration
def test_a_decode_step_of_the_probe_is_timed_through_llama_cpp_and_the_file_removed(tmp_path):
    timing = step_probe.time_decode_step(1, tmp_path)
    assert 0 < timing.seconds < 10
    assert timing.n_layer == step_probe.PROBE.n_layer
    assert list(tmp_path.iterdir()) == []
