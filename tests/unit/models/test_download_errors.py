"""Network failures become one line that says what happened: the Hub was not reached, or a transfer broke."""

from __future__ import annotations

import pytest

from localr1.errors import DownloadError
from localr1.models.download import _http_errors, hub_errors, safe_repo_path


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


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://127.0.0.1:9", "Connection refused"), ("http://hub.invalid", "(not known|name resolution)")],
)
def test_a_hub_that_cannot_be_reached_fails_at_once(monkeypatch, url, reason):
    """No huggingface_hub call (and its ~23 s of retries) when the host refuses or does not resolve."""
    from localr1.models import download

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for proxy in download._PROXY_VARIABLES:
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(download, "_api", lambda: pytest.fail("the Hub client was called"))
    with pytest.raises(DownloadError, match=f"could not reach the Hugging Face Hub at {url} .*{reason}") as exc:
        download.list_remote("me/repo")
    assert "--offline" in exc.value.hint


def test_behind_a_proxy_the_client_decides(monkeypatch, network_guard):
    from localr1.models import download

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    download.check_reachable()  # no direct connection tried: it would bypass the proxy
    assert network_guard["attempts"] == []
