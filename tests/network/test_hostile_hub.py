"""A hostile or broken server, and deletions that must take exactly what was named (the red-team report).

Every name that comes from the network (commit id, ETag, file names) is checked before it reaches the
filesystem; a server that sends more than it announced leaves nothing that blocks the next pull; `rm`
never deletes by prefix.
"""

from __future__ import annotations

import json
import os

import pytest
from catalogs import tiny_entry
from ggufs import write_gguf

from localr1.cli.app import app

pytestmark = pytest.mark.network

REPO = "test/tiny-GGUF"
CATALOG = tiny_entry("tiny:1b", REPO, {"Q8_0": "tiny-Q8_0.gguf"}) + tiny_entry(
    "tiny:2b", REPO, {"Q8_0": "tiny2-Q8_0.gguf"}, params_b=0.002
)


@pytest.fixture
def hub(fake_hub, isolated_dirs, tmp_path):
    (isolated_dirs / "config").mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config" / "models.toml").write_text(CATALOG)
    fake_hub.add(REPO, "tiny-Q8_0.gguf", write_gguf(tmp_path / "a.gguf").read_bytes())
    fake_hub.add(REPO, "tiny2-Q8_0.gguf", write_gguf(tmp_path / "b.gguf", n_tensors=1).read_bytes())
    return fake_hub


def _everything_under(root):
    return {p for p in root.rglob("*")} if root.exists() else set()


def _outside_the_cache(isolated_dirs):
    """Files that appeared anywhere in the isolated home except the Hugging Face cache and the config."""
    allowed = (isolated_dirs / "hf", isolated_dirs / "config", isolated_dirs / "cache", isolated_dirs / "data")
    return {p for p in _everything_under(isolated_dirs) if not any(p.is_relative_to(a) for a in allowed)}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Repo-Commit": "../../../../escaped"},
        {"X-Repo-Commit": "0123456789abcdef0123456789abcdef0123456/"},
        {"ETag": '"../../../escaped"', "X-Linked-Etag": '"../../../escaped"'},
        {"ETag": '"abc/def"', "X-Linked-Etag": '"abc/def"'},
        {"X-Linked-Etag": '"../x"'},
    ],
    ids=["commit-dotdot", "commit-slash", "etag-dotdot", "etag-slash", "linked-etag"],
)
def test_names_in_headers_never_touch_the_filesystem(runner, hub, isolated_dirs, headers):
    hub.behaviour.headers["tiny-Q8_0.gguf"] = headers
    before = _everything_under(isolated_dirs.parent)
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 1, result.output
    assert "invalid" in result.stderr and "internal error" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))]
    assert len(errors) == 2 and "Traceback" not in result.stderr  # one line, one hint
    new = _everything_under(isolated_dirs.parent) - before
    assert not [p for p in new if "escaped" in str(p) or not p.is_relative_to(isolated_dirs / "hf")]


@pytest.mark.parametrize("name", ["../../escaped.gguf", "a/../../escaped.gguf", "/etc/escaped.gguf"])
def test_file_names_in_the_listing_that_leave_the_repo_are_refused(runner, hub, isolated_dirs, name):
    hub.behaviour.tree_names["tiny-Q8_0.gguf"] = name
    result = runner.invoke(app, ["pull", "test/tiny-GGUF"])
    assert result.exit_code == 1 and "refusing the file name" in result.stderr
    assert not [p for p in _everything_under(isolated_dirs.parent) if "escaped" in p.name]


def test_a_server_sending_too_much_leaves_nothing_that_blocks_the_next_pull(runner, hub, isolated_dirs):
    hub.behaviour.extra_bytes["tiny-Q8_0.gguf"] = os.urandom(4096)
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 1 and "sent more than" in result.stderr and "internal error" not in result.stderr
    hub.behaviour.extra_bytes.clear()  # the server is honest again
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 0, result.output


def test_an_oversized_incomplete_file_from_an_older_run_is_started_over(runner, hub, isolated_dirs):
    sha = hub.add(REPO, "tiny-Q8_0.gguf", hub.repos[REPO]["tiny-Q8_0.gguf"])
    blobs = isolated_dirs / "hf" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(os.urandom(len(hub.repos[REPO]["tiny-Q8_0.gguf"]) + 100))
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 0, result.output


def test_rm_deletes_exactly_what_was_named(runner, hub):
    assert runner.invoke(app, ["pull", "tiny:1b:Q8_0"]).exit_code == 0
    assert runner.invoke(app, ["pull", "tiny:2b:Q8_0"]).exit_code == 0
    result = runner.invoke(app, ["rm", "tiny", "--yes"])
    assert result.exit_code == 2 and "names no one model" in result.stderr
    assert "tiny:1b:Q8_0" in result.stderr and "tiny:2b:Q8_0" in result.stderr
    names = [m["name"] for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)]
    assert sorted(names) == ["tiny:1b:Q8_0", "tiny:2b:Q8_0"]
    result = runner.invoke(app, ["rm", "tiny:1", "--yes"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["rm", "tiny:1b", "--yes", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["removed"] == ["tiny:1b:Q8_0"]
    names = [m["name"] for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)]
    assert names == ["tiny:2b:Q8_0"]


def test_a_full_disk_during_pull_is_one_line(runner, hub, monkeypatch):
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def tell(self):
            return self.f.tell()

        def truncate(self, n):
            return self.f.truncate(n)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if str(path).endswith(".incomplete") and "b" in mode and "r" not in mode else f

    monkeypatch.setattr(builtins, "open", full_open)
    result = runner.invoke(app, ["pull", "tiny:1b:Q8_0"])
    assert result.exit_code == 1 and "no space left" in result.stderr and "internal error" not in result.stderr
