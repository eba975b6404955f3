from __future__ import annotations

import pytest
from tui_support import R1_REPLY, FakeClock

from localr1.engine.fake import FakeEngine
from localr1.text.conversations import ConversationStore
from localr1.tui.app import make_app
from localr1.tui.screens import PickerEntry


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def build(tmp_path, clock):
    """An app factory with a scripted engine; returns (app, engine, calls)."""

    def factory(scripts=(R1_REPLY,), *, loader=None, delay=0.0, entries=None, **kwargs):
        engine = FakeEngine([list(s) for s in scripts], delay=delay)
        calls = []

        def default_loader(spec, progress):
            calls.append(spec)
            return engine

        app = make_app(
            loader=loader or default_loader,
            store=ConversationStore(tmp_path / "chats"),
            picker_entries=lambda: (
                entries
                or [
                    PickerEntry("r1:7b:Q4_K_M", "r1:7b:Q4_K_M   fits on GPU", True, True),
                    PickerEntry("r1:70b", "r1:70b   too big", False, False),
                ]
            ),
            spec="fake-r1",
            clock=clock,
            export_dir=tmp_path,
            **kwargs,
        )
        return app, engine, calls

    return factory
