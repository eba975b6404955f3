"""localr1 quantize --imatrix: llama-imatrix's files (GGUF and legacy .dat) reach llama.cpp's quantizer.

The model is a converted tiny checkpoint with n_embd 256, so the K- and IQ-quants apply to its matrices."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import checkpoints  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from localr1.cli.app import app
from localr1.cli.state import state  # noqa: E402
from localr1.errors import InvalidModelFileError, UsageError  # noqa: E402
from localr1.models import quantize as q  # noqa: E402
from localr1.models.convert import convert  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imatrix")
    folder = checkpoints.make_checkpoint(root / "ckpt", "qwen2", dtype="float32")
    return convert(folder, root / "model-f16.gguf", outtype="f16").output


def _matrices(model: Path) -> dict[str, int]:
    """Weight matrices that llama-imatrix collects for: name -> input columns."""
    import gguf

    return {t.name: int(t.shape[0]) for t in gguf.GGUFReader(model).tensors if t.name.startswith("blk.")
            and t.name.endswith(".weight") and len(t.shape) == 2}  # fmt: skip


def _sums(model: Path, count: int = 1) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)  # skewed column importances, as real activations are
    return {name: (rng.gamma(0.5, 2.0, n).astype(np.float32) * count, count) for name, n in _matrices(model).items()}


def write_gguf_imatrix(path: Path, sums) -> None:
    import gguf

    w = gguf.GGUFWriter(path, arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["test-corpus.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, (s, count) in sums.items():
        w.add_tensor(f"{name}.in_sum2", s)
        w.add_tensor(f"{name}.counts", np.array([count], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy_imatrix(path: Path, sums, ncall: int = 1) -> None:
    """The .dat layout: values stored as mean * ncall, divided by ncall when loaded."""
    out = struct.pack("<i", len(sums))
    for name, (s, count) in sums.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(s))
        out += ((s / count) * ncall).astype(np.float32).tobytes()
    out += struct.pack("<i", 7) + struct.pack("<i", 15) + b"test-corpus.txt"
    path.write_bytes(out)


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    import gguf

    return {t.name: t.data.tobytes() for t in gguf.GGUFReader(path).tensors}


def _field(path: Path, key: str):
    import gguf

    f = gguf.GGUFReader(path).fields.get(key)
    return None if f is None else f.contents()


def test_both_formats_load_to_the_same_means(f16_model, tmp_path):
    sums = _sums(f16_model, count=100)
    write_gguf_imatrix(tmp_path / "im.gguf", sums)
    write_legacy_imatrix(tmp_path / "im.dat", sums, ncall=3)
    a, b = q.load_imatrix(tmp_path / "im.gguf"), q.load_imatrix(tmp_path / "im.dat")
    assert set(a.entries) == set(b.entries) == set(sums)
    for name, (s, count) in sums.items():
        assert np.allclose(a.entries[name], s / count, rtol=1e-6) and np.allclose(b.entries[name], s / count, rtol=1e-5)
    assert (a.datasets, a.chunk_count) == (b.datasets, b.chunk_count) == (["test-corpus.txt"], 7)


def test_imatrix_changes_the_quantization_and_is_recorded(f16_model, tmp_path):
    sums = _sums(f16_model)
    write_gguf_imatrix(tmp_path / "im.gguf", sums)
    write_legacy_imatrix(tmp_path / "im.dat", sums)
    plain = q.quantize(f16_model, "Q4_K_M", tmp_path / "plain.gguf").output
    with_gguf = q.quantize(f16_model, "Q4_K_M", tmp_path / "gguf.gguf", imatrix=tmp_path / "im.gguf").output
    with_dat = q.quantize(f16_model, "Q4_K_M", tmp_path / "dat.gguf", imatrix=tmp_path / "im.dat").output
    p, g, d = _tensor_bytes(plain), _tensor_bytes(with_gguf), _tensor_bytes(with_dat)
    changed = [n for n in _matrices(f16_model) if p[n] != g[n]]
    assert len(changed) >= len(_matrices(f16_model)) // 2, "the importance matrix must steer the rounding"
    assert g == d  # the same means (exact here: one call, one count) from either format, the same file data
    assert _field(with_gguf, "quantize.imatrix.file") == str(tmp_path / "im.gguf")
    assert _field(with_gguf, "quantize.imatrix.entries_count") == len(sums)
    assert _field(with_gguf, "quantize.imatrix.chunks_count") == 7
    assert _field(with_gguf, "quantize.imatrix.dataset") == "test-corpus.txt"
    assert _field(plain, "quantize.imatrix.file") is None


def test_low_bit_types_need_it_and_work_with_it(f16_model, tmp_path):
    state.debug = False
    runner = CliRunner()
    refused = runner.invoke(app, ["quantize", str(f16_model), "--to", "IQ2_XS"])
    assert refused.exit_code == 2 and "--imatrix" in refused.stderr
    write_gguf_imatrix(tmp_path / "im.gguf", _sums(f16_model))
    out = tmp_path / "iq2.gguf"
    args = ["quantize", str(f16_model), "--to", "IQ2_XS", "--imatrix", str(tmp_path / "im.gguf"), "-o", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["imatrix"] == str(tmp_path / "im.gguf")
    answer = runner.invoke(app, ["ask", "hi", "-m", str(out), "--max-tokens", "3", "--json"])
    assert answer.exit_code == 0, answer.output


def test_bad_or_foreign_imatrix_files(f16_model, tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(struct.pack("<i", 2) + b"\x05\x00\x00\x00blk.0")  # cut off after a name
    with pytest.raises(InvalidModelFileError, match="not a valid importance matrix"):
        q.quantize(f16_model, "Q4_K_M", tmp_path / "x.gguf", imatrix=bad)
    foreign = tmp_path / "foreign.gguf"
    write_gguf_imatrix(foreign, {"blk.0.some_other_model.weight": (np.ones(8, np.float32), 1)})
    with pytest.raises(UsageError, match="computed for another model"):
        q.quantize(f16_model, "Q4_K_M", tmp_path / "x.gguf", imatrix=foreign)
    with pytest.raises(UsageError, match="does not exist"):
        q.quantize(f16_model, "Q4_K_M", tmp_path / "x.gguf", imatrix=tmp_path / "missing.gguf")
    assert not list(tmp_path.glob("x.gguf*"))
