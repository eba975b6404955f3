"""Downloads against the fake Hub on 127.0.0.1: every way a download can go wrong."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import typer
from catalogs import tiny_entry
from ggufs import write_gguf

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.cli.library import pull_target
from localr1.engine.fake import FakeEngine
from localr1.errors import DownloadError
from localr1.models import download

pytestmark = pytest.mark.network

REPO = "test/tiny-GGUF"
CATALOG = tiny_entry("tiny:1b", REPO, {"Q8_0": "tiny-Q8_0.gguf", "Q4_K_M": "split/tiny-Q4_K_M-00001-of-00002.gguf"})


@pytest.fixture
def hub(fake_hub, isolated_dirs, tmp_path):
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config" / "models.toml").write_text(CATALOG)
    model = write_gguf(tmp_path / "tiny.gguf").read_bytes()
    fake_hub.model_bytes = model
    fake_hub.add(REPO, "tiny-Q8_0.gguf", model)
    fake_hub.add(REPO, "split/tiny-Q4_K_M-00001-of-00002.gguf", write_gguf(tmp_path / "a.gguf").read_bytes())
    fake_hub.add(
        REPO, "split/tiny-Q4_K_M-00002-of-00002.gguf", write_gguf(tmp_path / "b.gguf", n_tensors=1).read_bytes()
    )
    return fake_hub


def blobs(isolated_dirs):
    return isolated_dirs / "hf" / f"models--{REPO.replace('/', '--')}" / "blobs"


def test_pull_a_catalog_model(runner, hub, isolated_dirs):
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    assert path.endswith("snapshots/" + "0123456789abcdef0123456789abcdef01234567/tiny-Q8_0.gguf")
    assert Path(path).read_bytes() == hub.model_bytes
    assert "Pulling tiny:1b:Q8_0 from test/tiny-GGUF" in result.stderr
    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [(m["name"], m["quant"]) for m in listed] == [("tiny:1b:Q8_0", "Q8_0")]
    # the file is found by name afterwards, and a second pull downloads nothing
    again = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert "already downloaded" in again.stderr
    assert len(hub.downloads("tiny-Q8_0.gguf")) == 1


def test_pull_without_quant_takes_the_planned_one(runner, hub):
    result = runner.invoke(app, ["pull", "tiny:1b", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] in ("tiny:1b:Q8_0", "tiny:1b:Q4_K_M")


def test_pull_a_hub_file(runner, hub):
    result = runner.invoke(app, ["pull", f"{REPO}:tiny-Q8_0.gguf"])
    assert result.exit_code == 0 and result.stdout.strip().endswith("tiny-Q8_0.gguf")
    result = runner.invoke(app, ["pull", REPO])  # two models in the repo: name one
    assert result.exit_code == 1 and "has 2 GGUF models" in result.stderr


def test_split_model_is_one_model(runner, hub, isolated_dirs):
    result = runner.invoke(app, ["pull", "tiny:1b:Q4_K_M"])
    assert result.exit_code == 0, result.output
    assert len(hub.downloads("split/tiny-Q4_K_M-00002-of-00002.gguf")) == 1
    names = [m["name"] for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)]
    assert names == ["tiny:1b:Q4_K_M"]
    result = runner.invoke(app, ["rm", "tiny:1b", "--yes"])
    assert result.exit_code == 0 and "Removed tiny:1b:Q4_K_M" in result.stdout
    assert not any(p.is_file() for p in blobs(isolated_dirs).iterdir())
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


def test_dropped_connection_resumes_with_a_range_request(hub):
    data = os.urandom(24 << 20)  # larger than huggingface_hub's 10 MiB write chunks
    sha = hub.add(REPO, "big.gguf", data)
    hub.behaviour.drop_after["big.gguf"] = 15 << 20
    path = download.pull(download.resolve_target(f"{REPO}:big.gguf"), show_progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    ranges = hub.downloads("big.gguf")
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


def test_interrupted_download_resumes_in_the_next_run(hub, isolated_dirs):
    data = os.urandom(3 << 20)
    sha = hub.add(REPO, "resume.gguf", data)
    blob_dir = blobs(isolated_dirs)
    blob_dir.mkdir(parents=True)
    (blob_dir / f"{sha}.incomplete").write_bytes(data[: 1 << 20])  # what a killed process left behind
    target = download.resolve_target(f"{REPO}:resume.gguf")
    assert download.remaining_bytes(target) == 2 << 20
    path = download.pull(target, show_progress=False)
    assert path.read_bytes() == data
    assert hub.downloads("resume.gguf") == [f"bytes={1 << 20}-"]


def test_corrupted_bytes_are_caught_and_deleted(runner, hub, isolated_dirs):
    hub.behaviour.corrupt.add("tiny-Q8_0.gguf")
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 1
    assert "corrupted in transit" in result.stderr and "deleted" in result.stderr
    assert not [p for p in blobs(isolated_dirs).iterdir() if p.is_file() and not p.name.endswith(".lock")]
    hub.behaviour.corrupt.clear()
    assert runner.invoke(app, ["pull", "tiny:1b:Q8_0"]).exit_code == 0


def test_verification_is_cached(hub, monkeypatch):
    target = download.resolve_target("tiny:1b:Q8_0")
    calls = []
    real = download.sha256_file
    monkeypatch.setattr(download, "sha256_file", lambda p, progress=None: calls.append(p) or real(p, progress))
    download.pull(target, show_progress=False)
    download.pull(target, show_progress=False)
    assert len(calls) == 1


def test_missing_repo_and_file(runner, hub):
    result = runner.invoke(app, ["pull", "nobody/nothing-GGUF:x.gguf"])
    assert result.exit_code == 1 and "repository nobody/nothing-GGUF was not found" in result.stderr
    result = runner.invoke(app, ["pull", f"{REPO}:missing.gguf"])
    assert result.exit_code == 1 and "does not have missing.gguf" in result.stderr


def test_gated_repo(runner, hub):
    hub.behaviour.gated.add(REPO)
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 1 and "is gated" in result.stderr and "hf auth login" in result.stderr


def test_slow_server_still_completes(hub):
    hub.behaviour.delay_per_chunk = 0.01
    hub.behaviour.chunk = 1024
    path = download.pull(download.resolve_target("tiny:1b:Q8_0"), show_progress=False)
    assert path.read_bytes() == hub.model_bytes


def test_not_enough_disk_is_refused_before_any_byte(runner, hub, isolated_dirs, monkeypatch):
    monkeypatch.setenv("LOCALR1_HW", "gpu=none,ram=16GiB,disk=1MiB")
    data = os.urandom(2 << 20)
    hub.add(REPO, "huge.gguf", data)
    result = runner.invoke(app, ["pull", f"{REPO}:huge.gguf"])
    assert result.exit_code == 1 and "not enough disk space" in result.stderr
    assert hub.downloads("huge.gguf") == []
    assert not blobs(isolated_dirs).exists() or not any(blobs(isolated_dirs).iterdir())


@pytest.mark.parametrize(
    "name", ["../evil.gguf", "/etc/evil.gguf", "a/../../evil.gguf", "a\\..\\evil.gguf", "C:/evil.gguf"]
)
def test_names_that_would_escape_the_cache_are_refused(runner, hub, name):
    result = runner.invoke(app, ["pull", f"{REPO}:{name}"])
    assert result.exit_code != 0 and "refusing the file name" in result.stderr
    hub.add(REPO, name, b"GGUF")  # a hostile repository listing
    with pytest.raises(DownloadError, match="refusing"):
        download.list_remote(REPO)


def test_only_gguf_files_are_fetched(runner, hub):
    hub.add(REPO, "setup.py", b"import os; os.system('echo owned')")
    result = runner.invoke(app, ["pull", f"{REPO}:setup.py"])
    assert result.exit_code == 1 and "only .gguf" in result.stderr
    assert hub.downloads("setup.py") == []
    assert all(f.path.endswith(".gguf") for f in download.list_remote(REPO))


def test_concurrent_pulls_do_not_corrupt_each_other(hub):
    data = os.urandom(12 << 20)
    sha = hub.add(REPO, "shared.gguf", data)
    hub.behaviour.delay_per_chunk = 0.002
    target = download.resolve_target(f"{REPO}:shared.gguf")
    results, errors = [], []

    def worker():
        try:
            results.append(download.pull(target, show_progress=False))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sha for p in results)


def test_offline_uses_the_cache_and_opens_no_socket(runner, hub, network_guard, monkeypatch):
    assert runner.invoke(app, ["pull", "tiny:1b:Q8_0"]).exit_code == 0
    hub.stop()
    network_guard["allow_loopback"] = False  # from here on, any connection fails the test
    network_guard["attempts"].clear()
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0", "--offline"])
    assert result.exit_code == 0 and result.stdout.strip().endswith("tiny-Q8_0.gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["pull", "tiny:1b:Q4_K_M"])
    assert result.exit_code == 1 and "not in the local cache and localr1 is offline" in result.stderr
    assert network_guard["attempts"] == []


def test_ask_pulls_the_model_on_first_use(runner, hub, monkeypatch):
    monkeypatch.setattr(loader_module, "load_engine", lambda *a, **k: FakeEngine([["</think>", "hello"]]))
    result = runner.invoke(app, ["ask", "hi", "-m", "tiny:1b:Q8_0"])
    assert result.exit_code == 0, result.output
    assert "Pulling tiny:1b:Q8_0" in result.stderr and "GiB to download" in result.stderr
    assert result.stdout == "hello\n"
    # the planner estimated the build from its architecture; the file it got is another size: planned again
    assert "not the" in result.stderr and "re-planned for the file" in result.stderr
    # offline, the same question works from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["ask", "hi", "-m", "tiny:1b:Q8_0", "--offline"])
    assert result.exit_code == 0 and "Pulling" not in result.stderr


def test_rm_asks_first(runner, hub):
    assert runner.invoke(app, ["pull", "tiny:1b:Q8_0"]).exit_code == 0
    result = runner.invoke(app, ["rm", "tiny:1b:Q8_0"])  # no terminal to ask on
    assert result.exit_code == 2 and "--yes" in result.stderr
    result = runner.invoke(app, ["rm", "tiny:1b:Q8_0", "--yes", "--json"])
    assert json.loads(result.stdout)["removed"] == ["tiny:1b:Q8_0"]
    result = runner.invoke(app, ["rm", "tiny:1b:Q8_0", "--yes"])
    assert result.exit_code == 1 and "no downloaded model matches" in result.stderr


def test_ctrl_c_in_asks_download_stops_it_and_the_next_run_resumes(hub, isolated_dirs):
    """ask's Ctrl-C handler only sets its cancel event (generation stops cleanly on it): the download checks
    the event after every chunk, so one Ctrl-C stops a multi-gigabyte download too, keeping what came."""
    data = os.urandom(5 << 20)
    sha = hub.add(REPO, "stop.gguf", data)
    target = download.resolve_target(f"{REPO}:stop.gguf")
    cancel = threading.Event()
    cancel.set()  # pressed before the first chunk had arrived
    with pytest.raises(typer.Exit) as stopped:
        pull_target(target, cancel=cancel)
    assert stopped.value.exit_code == 130
    kept = blobs(isolated_dirs) / f"{sha}.incomplete"
    assert kept.stat().st_size == 1 << 20  # one chunk, then the check
    path = pull_target(target, cancel=threading.Event())
    assert path.read_bytes() == data
    assert hub.downloads("stop.gguf")[-1] == f"bytes={1 << 20}-"


def test_the_hubs_listing_wins_over_the_catalogs_split_names(runner, fake_hub, isolated_dirs, tmp_path):
    """A build the Hub re-uploaded in another number of parts, or as one file, is found by listing; the pull
    says what changed; a size the catalog lists that the Hub no longer matches is named."""
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    catalog = tiny_entry(
        "tiny:1b", REPO,
        {"Q4_K_M": "split/tiny-Q4_K_M-00001-of-00002.gguf", "Q8_0": "Q8/tiny-Q8_0-00001-of-00002.gguf",
         "Q6_K": "tiny-Q6_K.gguf"},
    ) + '[models."tiny:1b".sizes]\nQ4_K_M = 999999\n'  # fmt: skip
    (isolated_dirs / "config" / "models.toml").write_text(catalog)
    for i in (1, 2, 3):  # now three parts
        fake_hub.add(REPO, f"split/tiny-Q4_K_M-0000{i}-of-00003.gguf", write_gguf(tmp_path / f"p{i}.gguf").read_bytes())
    fake_hub.add(REPO, "tiny-Q8_0.gguf", write_gguf(tmp_path / "q8.gguf").read_bytes())  # no longer split
    for i in (1, 2):  # now split
        fake_hub.add(
            REPO, f"tiny-Q6_K/tiny-Q6_K-0000{i}-of-00002.gguf", write_gguf(tmp_path / f"s{i}.gguf").read_bytes()
        )

    target = download.resolve_target("tiny:1b:Q4_K_M")
    assert [f.path for f in target.files] == [f"split/tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert "now lists this build as split/tiny-Q4_K_M-00001-of-00003.gguf" in target.notes[0]
    assert "the catalog lists" in target.notes[1]
    assert [f.path for f in download.resolve_target("tiny:1b:Q8_0").files] == ["tiny-Q8_0.gguf"]
    q6 = download.resolve_target("tiny:1b:Q6_K").files
    assert [f.path for f in q6] == [f"tiny-Q6_K/tiny-Q6_K-0000{i}-of-00002.gguf" for i in (1, 2)]
    result = runner.invoke(app, ["pull", "tiny:1b:Q4_K_M"])
    assert result.exit_code == 0, result.output
    assert "Note: the Hub now lists this build as split/tiny-Q4_K_M-00001-of-00003.gguf" in result.stderr


class _Stop(Exception):
    """Raised by a test's fetch: the download would start here."""


def _catalog_listing(isolated_dirs, fake_hub, tmp_path, catalog_size: int, hub_size: int) -> None:
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    entry = (
        tiny_entry("tiny:1b", REPO, {"Q8_0": "tiny-Q8_0.gguf"}) + f'[models."tiny:1b".sizes]\nQ8_0 = {catalog_size}\n'
    )
    (isolated_dirs / "config" / "models.toml").write_text(entry)
    model = write_gguf(tmp_path / "m.gguf").read_bytes()
    fake_hub.add(REPO, "tiny-Q8_0.gguf", model + b"\0" * (hub_size - len(model)))


def test_a_build_the_hub_lists_bigger_is_planned_again_before_the_first_byte(fake_hub, isolated_dirs, tmp_path):
    """A re-upload the catalog does not know: the Hub's listing (32 MiB) is not the catalog's size (1 MiB).
    The build is planned again at the listed size and the user told so, before anything is downloaded."""
    from localr1.config import load_config
    from localr1.fit.request import LoadRequest

    _catalog_listing(isolated_dirs, fake_hub, tmp_path, 1 << 20, 32 << 20)
    said, fetched = [], []

    def fetch(target, offline):
        fetched.append(target.size)
        raise _Stop

    with pytest.raises(_Stop):
        loader_module.open_model(LoadRequest(spec="tiny:1b:Q8_0"), load_config(), fetch=fetch, say=said.append)
    assert fetched == [32 << 20]
    assert any(s.startswith("tiny:1b:Q8_0 is ") and "on the Hub, not the" in s and "planned again before downloading" in s
               for s in said), said  # fmt: skip


def test_a_build_that_no_longer_fits_at_its_listed_size_stops_before_the_download(
    runner, fake_hub, isolated_dirs, tmp_path, monkeypatch
):
    """The catalog's 1 MiB fits a machine with ~40 MiB to spare; the 96 MiB the Hub lists does not: one line,
    exit 1, and nothing fetched."""
    _catalog_listing(isolated_dirs, fake_hub, tmp_path, 1 << 20, 96 << 20)
    monkeypatch.setenv("LOCALR1_HW", "gpu=none,ram=1740MiB,disk=1TiB")
    result = runner.invoke(app, ["ask", "hi", "-m", "tiny:1b:Q8_0"])
    assert result.exit_code == 1, result.output
    assert "on the Hub, not the" in result.stderr and "nothing was downloaded" in result.stderr
    assert "Traceback" not in result.output
    assert not fake_hub.downloads("tiny-Q8_0.gguf")
