"""``localr1 chat`` refuses what it cannot do before the full-screen app starts."""

from __future__ import annotations

import pytest

from localr1.cli import chat as chat_cli
from localr1.cli.app import app
from localr1.errors import ModelNotFoundError
from localr1.models.resolve import check_spec


@pytest.fixture
def no_app(monkeypatch):
    """The Textual app must not start: make_app failing the test if it is reached."""
    import localr1.tui.app as tui_app

    def make_app(**kwargs):
        raise AssertionError("the app started")

    monkeypatch.setattr(tui_app, "make_app", make_app)


def test_chat_needs_a_terminal(runner, no_app):
    result = runner.invoke(app, ["chat"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: chat needs a terminal",
        'Hint: For pipes and scripts: localr1 ask "..." (or --json).',
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("r1:99b", "unknown model 'r1:99b'"),
        ("r1:7b:Q9_K", "r1:7b has no Q9_K build in the catalog"),
        ("./no/such.gguf", "no such file: ./no/such.gguf"),
    ],
)
def test_a_model_that_can_never_load_fails_before_the_app(runner, no_app, monkeypatch, spec, message):
    monkeypatch.setattr(chat_cli, "is_terminal", lambda: True)
    result = runner.invoke(app, ["chat", spec])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"Error: {message}"


def test_check_spec_lets_through_what_can_load(tmp_path):
    check_spec("r1:7b")  # not downloaded: it can be
    check_spec("r1:7b:Q5_K_M")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    check_spec(str(model))
    with pytest.raises(ModelNotFoundError):
        check_spec("r1")
