"""Thinking budgets (budget forcing): the decision token by token, and the scripted engine's exact accounting."""

from __future__ import annotations

import pytest

from localr1.engine.fake import FakeEngine
from localr1.errors import UsageError
from localr1.events import Answer, Done, Reasoning
from localr1.text.prompt import Prompt
from localr1.text.sampling import Sampling
from localr1.text.thinking import MAX_WAITS, ThinkingControl

THINKING = Prompt(text="q", opens_thinking=True)
SCRIPT = ["Hmm", " so", " 2", "+2", "</think>", "\n\n", "It is 4."]


def run(sampling, script=SCRIPT):
    events = list(FakeEngine([script]).stream(THINKING, sampling))
    done = events[-1]
    assert isinstance(done, Done)
    return events[:-1], done


def test_the_decision_token_by_token():
    c = ThinkingControl(budget=3)
    assert [c.step(False) for _ in range(3)] == ["accept", "accept", "cut"]
    assert c.cut and not c.thinking and c.step(True) == "accept"  # after the cut, nothing is decided
    c = ThinkingControl(minimum=5)
    assert c.step(False) == "accept" and c.step(True) == "suppress" and c.waits == 1
    for _ in range(4):
        c.step(False)
    assert c.step(True) == "accept" and not c.thinking  # 5 tokens: the end stands
    c = ThinkingControl(minimum=100)
    assert [c.step(True) for _ in range(MAX_WAITS + 1)] == ["suppress"] * MAX_WAITS + ["accept"]  # bounded
    assert not ThinkingControl(budget=3, thinking=False).active  # no reasoning opened: nothing to control


def test_budget_cuts_the_thinking_once_with_exact_accounting():
    events, done = run(Sampling(think_budget=2))
    forced = [e for e in events if isinstance(e, Reasoning) and e.forced]
    assert (
        len(forced) == 1 and forced[0].text.strip() == "Considering the limited time, I have to give the solution now."
    )
    model = "".join(e.text for e in events if isinstance(e, Reasoning) and not e.forced)
    assert model == "Hmm so"  # the model's two thinking tokens, nothing after the cut
    assert "".join(e.text for e in events if isinstance(e, Answer)) == "It is 4."
    report = done.thinking
    assert (report.budget, report.model_tokens, report.cut, report.waits, report.forced_tokens) == (2, 2, True, 0, 3)
    # 2 thinking + 3 forced (transition, </think>, blank line) + the answer's "\n\n" and text
    assert done.usage.completion_tokens == 2 + 3 + 2 and not done.reasoning_unfinished
    assert done.to_dict()["thinking_budget"]["cut"] is True


def test_a_budget_the_model_stays_under_changes_nothing():
    events, done = run(Sampling(think_budget=50))
    plain, plain_done = run(Sampling())
    assert [(type(e), e.text) for e in events] == [(type(e), e.text) for e in plain]
    assert done.usage == plain_done.usage and done.thinking.cut is False and done.thinking.model_tokens == 4
    assert plain_done.thinking is None and "thinking_budget" not in plain_done.to_dict()


def test_min_thinking_replaces_an_early_end_with_wait():
    events, done = run(Sampling(think_min=6), SCRIPT + ["</think>", "\n\n", "Yes, 4."])
    forced = [e.text for e in events if isinstance(e, Reasoning) and e.forced]
    assert forced == ["\n\nWait"]
    assert done.thinking.waits == 1 and done.thinking.forced_tokens == 1
    # the second "</think>" came after 6 thinking tokens: it stands, and the answer follows
    assert "".join(e.text for e in events if isinstance(e, Answer)) == "Yes, 4."


def test_min_thinking_gives_up_after_the_set_number_of_waits():
    script = ["a", "</think>"] * (MAX_WAITS + 2) + ["\n\n", "done"]
    events, done = run(Sampling(think_min=1000), script)
    assert done.thinking.waits == MAX_WAITS
    assert "".join(e.text for e in events if isinstance(e, Answer)).strip().endswith("done")


def test_budgets_are_checked():
    with pytest.raises(UsageError, match="at least 1"):
        Sampling(think_budget=0).validate()
    with pytest.raises(UsageError, match="larger than"):
        Sampling(think_budget=10, think_min=20).validate()
