"""What the main screens look like (pytest-textual-snapshot; update with --snapshot-update)."""

from __future__ import annotations

from tui_support import R1_REPLY, until

from localr1.engine.fake import FakeEngine
from localr1.events import Timings
from localr1.text.conversations import ConversationStore
from localr1.tui.app import make_app
from localr1.tui.screens import PickerEntry
from localr1.tui.widgets import PromptInput

SIZE = (100, 30)
TIMINGS = Timings(decode_s=1.0, decode_tokens=41, prompt_tokens=12)  # 40 tokens/s


def app_with_reply(tmp_path):
    engine = FakeEngine([R1_REPLY], timings=TIMINGS)
    return make_app(
        loader=lambda spec, progress: engine,
        store=ConversationStore(tmp_path),
        picker_entries=lambda: [
            PickerEntry(
                "r1-0528:8b:Q8_0", "r1-0528:8b:Q8_0   DeepSeek-R1-0528-Qwen3-8B · fits on GPU · ~17 tok/s", True, True
            ),
            PickerEntry(
                "r1:14b:Q4_K_M", "r1:14b:Q4_K_M     DeepSeek-R1-Distill-Qwen-14B · partial offload", False, True
            ),
            PickerEntry("r1:671b", "r1:671b           DeepSeek-R1 (671B MoE) · too big for this machine", False, False),
        ],
        spec="r1-demo",
        clock=lambda: 0.0,
        export_dir=tmp_path,
    )


async def ready(pilot):
    """The model loaded, its toast gone, and the prompt's cursor steady: a blinking cursor is drawn or not
    depending on the instant of the snapshot (what failed CI once)."""
    await until(pilot, lambda: pilot.app.engine is not None, "the model to load")
    pilot.app.query_one(PromptInput).cursor_blink = False
    await pilot.pause(0.1)
    pilot.app.clear_notifications()


async def ask(pilot, text="What is 2+2?"):
    app = pilot.app
    await ready(pilot)
    for ch in text:
        await pilot.press("space" if ch == " " else ch)
    await pilot.press("enter")
    await until(pilot, lambda: app.conversation.turns and app.conversation.turns[-1].finish_reason, "the reply")
    await app.workers.wait_for_complete()
    await pilot.pause(0.3)
    app.clear_notifications()
    await pilot.pause(0.1)


def test_answer_with_collapsed_thinking(snap_compare, tmp_path):
    assert snap_compare(app_with_reply(tmp_path), terminal_size=SIZE, run_before=ask)


def test_thinking_expanded(snap_compare, tmp_path):
    async def run_before(pilot):
        await ask(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)

    assert snap_compare(app_with_reply(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_model_picker(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("ctrl+l")
        await pilot.pause(0.2)

    assert snap_compare(app_with_reply(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause(0.2)

    assert snap_compare(app_with_reply(tmp_path), terminal_size=SIZE, run_before=run_before)
