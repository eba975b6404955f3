"""Network failures become one line that says what happened: the Hub was not reached, or a transfer broke."""

from __future__ import annotations

import pytest

from localr1.download import _http_errors, hub_errors, safe_repo_path
from localr1.errors import DownloadError


def connect_error():
    base = _http_errors()[0]
    module = __import__(base.__module__.split(".")[0])
    return module.ConnectError("[Errno 111] Connection refused")


def test_unreachable_hub_is_not_called_an_interrupted_download():
    with pytest.raises(DownloadError, match="could not reach the Hugging Face Hub") as exc, hub_errors("me/repo"):
        raise connect_error()
    assert "--offline" in exc.value.hint


def test_a_broken_transfer_says_it_resumes():
    with pytest.raises(DownloadError, match="was interrupted") as exc, hub_errors("me/repo/x.gguf", transfer=True):
        raise connect_error()
    assert "resumes" in exc.value.hint


def test_other_errors_pass_through():
    with pytest.raises(KeyboardInterrupt), hub_errors("me/repo"):
        raise KeyboardInterrupt
    with pytest.raises(ValueError), hub_errors("me/repo"):
        raise ValueError("a bug, not a network problem")


@pytest.mark.parametrize("name", ["a.gguf", "dir/a-00001-of-00002.gguf", "UD-IQ1_S/x.gguf"])
def test_safe_names_pass(name):
    assert safe_repo_path(name) == name
