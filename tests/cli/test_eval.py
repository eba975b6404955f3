"""``localr1 eval`` end to end with the scripted engine: exact accuracy, resume after an interrupt, budgets,
JSON and --compare."""

from __future__ import annotations

import json

import pytest

from localr1 import loader as loader_module
from localr1.cli.app import app
from localr1.engine.fake import FakeEngine


def reply(answer: str, thinking: str = "Let me compute.") -> list[str]:
    return ["<think>\n", thinking, "</think>", "\n\n", f"The answer is $\\boxed{{{answer}}}$."]


class Interrupting(FakeEngine):
    """Ctrl-C during the n-th reply."""

    def __init__(self, scripts, stop_at: int | None = None) -> None:
        super().__init__(scripts)
        self.calls, self.stop_at = 0, stop_at

    def stream(self, prompt, sampling, *, cancel=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().stream(prompt, sampling, cancel=cancel)


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "suite.jsonl"
    rows = [("p1", "What is 2+2?", "4"), ("p2", "Half of one?", "\\frac{1}{2}"), ("p3", "3*3?", "9")]
    path.write_text("".join(json.dumps({"id": i, "problem": q, "answer": a}) + "\n" for i, q, a in rows))
    return path


def use(monkeypatch, engine):
    monkeypatch.setattr(loader_module, "load_engine", lambda path, header, options, cancel=None: engine)
    return engine


def test_exact_accuracy_from_scripted_answers(runner, monkeypatch, suite, small_gguf, tmp_path):
    # 3 problems x 2 samples: p1 right twice, p2 right once (0.5 as a decimal), p3 wrong twice
    engine = use(monkeypatch, FakeEngine([reply("4"), reply("4"), reply("0.5"), reply("1/3"), reply("8"), reply("10")]))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["eval", str(small_gguf), "--suite", str(suite), "-k", "2", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (r,) = summary["results"]
    assert r["pass_at_1"] == pytest.approx((1 + 0.5 + 0) / 3) and r["samples"] == 6
    assert [p["pass_at_1"] for p in r["per_problem"]] == [1.0, 0.5, 0.0]
    assert r["majority"] == pytest.approx(2 / 3)  # p2's vote is a tie: the first answer given (0.5, right) wins
    prompt = engine.prompts[0]
    assert "put your final answer within \\boxed{}" in prompt.text and prompt.opens_thinking  # ask --math's prompt
    seeds = [s.seed for s in engine.samplings]
    assert len(set(seeds)) == 6  # each (problem, sample) its own seed
    assert json.loads((out / "summary.json").read_text())["results"][0]["samples"] == 6
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["meta"]["suite"] == "suite" and len(lines) == 7


def test_interrupted_run_continues_without_losing_or_repeating(runner, monkeypatch, suite, small_gguf, tmp_path):
    out = tmp_path / "run"
    args = ["eval", str(small_gguf), "--suite", str(suite), "-k", "2", "--out", str(out)]
    use(monkeypatch, Interrupting([reply("4"), reply("4"), reply("0.5"), reply("1")], stop_at=4))
    first = runner.invoke(app, args)
    assert first.exit_code == 130 and "3 samples are saved" in first.stderr and "run the same command" in first.stderr
    engine = use(monkeypatch, FakeEngine([reply("1"), reply("9"), reply("9")]))
    second = runner.invoke(app, [*args, "--json"])
    assert second.exit_code == 0, second.output
    assert "Continuing" in second.stderr and "3 of 6 samples are done" in second.stderr
    assert len(engine.prompts) == 3  # only what was missing
    (r,) = json.loads(second.stdout)["results"]
    assert [p["pass_at_1"] for p in r["per_problem"]] == [1.0, 0.5, 1.0] and r["samples"] == 6
    keys = [(s["problem"], s["sample"]) for s in map(json.loads, (out / "samples.jsonl").read_text().splitlines()[1:])]
    assert len(keys) == len(set(keys)) == 6


def test_budget_sweep_records_cuts_and_draws_the_curve(runner, monkeypatch, suite, small_gguf, tmp_path):
    long_thought = ["<think>\n", "a", " b", " c", " d", " e", "</think>", "\n\n", "$\\boxed{4}$"]
    use(monkeypatch, FakeEngine([long_thought] * 6))
    out = tmp_path / "run"
    args = ["eval", str(small_gguf), "--suite", str(suite), "--budgets", "2,none", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    cut, free = summary["results"]
    assert (cut["budget"], cut["cut"], cut["thinking_tokens"]) == (2, 1.0, 2)
    assert (free["budget"], free["cut"], free["thinking_tokens"]) == (None, 0.0, 6)  # "</think>" not counted
    assert summary["plot"].endswith("curve.svg") and (out / "curve.svg").read_text().startswith("<svg")
    text = runner.invoke(app, args)  # all done: the report again, with the terminal curve
    assert "mean thinking tokens" in text.stdout and "unbounded" in text.stdout


def test_compare_two_runs(runner, monkeypatch, suite, small_gguf, tmp_path):
    base = ["eval", str(small_gguf), "--suite", str(suite)]
    use(monkeypatch, FakeEngine([reply("0")] * 3))
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    use(monkeypatch, FakeEngine([reply("4"), reply("1/2"), reply("9")]))
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--temperature", "0.5"]).exit_code == 0
    result = runner.invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["comparisons"]
    assert (row["a"], row["b"], row["problems"]) == (0.0, 1.0, 3) and row["p_value"] == pytest.approx(0.25)
    text = runner.invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert "paired by problem" in text.stdout and "+100.0%" in text.stdout


def test_bad_input_is_one_line(runner, small_gguf, tmp_path):
    result = runner.invoke(app, ["eval", str(small_gguf), "--budgets", "fast"])
    assert result.exit_code == 2 and "'fast' is not a token count" in result.stderr
    result = runner.invoke(app, ["eval", str(small_gguf), "--budgets", "8", "--think-budget", "4"])
    assert result.exit_code == 2 and "not both" in result.stderr
    result = runner.invoke(app, ["eval", "--compare", str(tmp_path / "x"), str(tmp_path / "y")])
    assert result.exit_code == 2 and "no eval run" in result.stderr


def test_hostile_suites_and_paths_are_one_line(runner, monkeypatch, small_gguf, tmp_path):
    """A suite line of 100,000 '[' (RecursionError), a 5,000-digit answer (ValueError), a budget of '²' (a
    digit to str.isdigit, not to int) and output paths that cannot be written all said "internal error"."""
    deep, digits = tmp_path / "deep.jsonl", tmp_path / "digits.jsonl"
    deep.write_text("[" * 100_000 + "\n")
    digits.write_text('{"problem": "How many?", "answer": ' + "7" * 5000 + "}\n")
    cases = [
        (["--suite", str(deep)], "nested too deeply"),
        (["--suite", str(digits)], "more than 4,300 digits"),
        (["--budgets", "²"], "'²' is not a token count"),
    ]
    for args, fragment in cases:
        result = runner.invoke(app, ["eval", str(small_gguf), *args])
        assert result.exit_code == 2 and fragment in result.stderr, result.output
        assert "internal error" not in result.output
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"problem": "2+2?", "answer": "4"}) + "\n")
    for args, fragment in [
        (["--out", "/proc/nope"], "/proc/nope"),
        (["--plot", "/nonexistent/dir/x.svg"], "/nonexistent"),
    ]:
        use(monkeypatch, FakeEngine([reply("4")] * 2))
        result = runner.invoke(
            app, ["eval", str(small_gguf), "--suite", str(suite), "--out", str(tmp_path / "r"), *args]
        )
        assert result.exit_code == 1 and fragment in result.stderr and "internal error" not in result.output, (
            result.output
        )


def test_a_long_answer_from_the_model_is_checked_not_crashed_on():
    from localr1.evaluation.answers import is_equivalent

    assert not is_equivalent("7" * 5000, "7" * 4999)
    assert is_equivalent("7" * 5000, "7" * 5000)


def test_compare_takes_runs_as_their_samples_files(runner, monkeypatch, suite, small_gguf, tmp_path):
    """The documented samples.jsonl form: the curve goes beside run B's samples (it was written *into*
    b/samples.jsonl/compare.svg and failed)."""
    base = ["eval", str(small_gguf), "--suite", str(suite), "--budgets", "8,16"]
    use(monkeypatch, FakeEngine([reply("0")] * 6))
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    use(monkeypatch, FakeEngine([reply("4")] * 6))
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--temperature", "0.5"]).exit_code == 0
    a, b = tmp_path / "a" / "samples.jsonl", tmp_path / "b" / "samples.jsonl"
    result = runner.invoke(app, ["eval", "--compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "compare.svg").is_file()


def test_problem_ids_and_answers_print_without_their_escape_sequences(runner, monkeypatch, small_gguf, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"id": "\x1b]0;PWNED\x07p1\x1b[2J", "problem": "2+2?", "answer": "4"}) + "\n")
    use(monkeypatch, FakeEngine([reply("4\x1b[31m")]))
    result = runner.invoke(
        app, ["eval", str(small_gguf), "--suite", str(suite), "--out", str(tmp_path / "r"), "--per-problem"]
    )
    assert result.exit_code == 0, result.output
    assert "p1" in result.stdout and "\x1b" not in result.output and "\x07" not in result.output
