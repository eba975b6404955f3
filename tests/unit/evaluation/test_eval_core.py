"""eval's suites, run files and report, without an engine."""

from __future__ import annotations

import json
import math

import pytest

from localr1.errors import UsageError
from localr1.evaluation.answers import is_equivalent
from localr1.evaluation.report import compare, paired_p_value, summarise
from localr1.evaluation.runs import Run, Sample, load_run, open_run, sample_seed
from localr1.evaluation.suites import SUITES, load_suite


def test_builtin_suite_is_graded_and_its_answers_are_right():
    name, problems = load_suite(None)
    assert name == "basic" and len(problems) == 36 and "36 problems" in SUITES["basic"]
    assert len({p.id for p in problems}) == 36
    assert {p.topic for p in problems} == {"arithmetic", "number theory", "algebra", "combinatorics"}
    assert {p.level for p in problems} == {1, 2, 3}
    by_id = {p.id: p.answer for p in problems}
    # a few recomputed another way
    assert by_id["nt-4"] == "24"  # 360 = 2^3 3^2 5: (3+1)(2+1)(1+1)
    assert by_id["comb-9"] == str(round(math.factorial(5) / math.e))  # derangements of 5
    assert by_id["comb-5"] == str(math.comb(8 + 3, 3))  # d1-1 + d2 + d3 + d4 = 8: stars and bars
    assert by_id["nt-7"] == "1" and by_id["alg-5"] == "-\\frac{15}{2}" and by_id["arith-5"] == "\\frac{1}{100}"
    for p in problems:  # every reference answer is one the checker understands
        assert is_equivalent(p.answer, p.answer), p.id


def test_jsonl_suites_of_the_public_releases(tmp_path):
    math500 = tmp_path / "MATH-500.jsonl"
    math500.write_text(
        json.dumps({"problem": "What is 1+1?", "answer": "2", "unique_id": "test/a/1.json", "level": 1,
                    "subject": "Algebra"}) + "\n\n"
        + json.dumps({"problem": "Half of 1?", "answer": "\\frac{1}{2}", "unique_id": "test/a/2.json"}) + "\n"
    )  # fmt: skip
    name, problems = load_suite(str(math500))
    assert name == "MATH-500" and [p.id for p in problems] == ["test/a/1.json", "test/a/2.json"]
    assert problems[0].level == 1 and problems[0].topic == "Algebra"
    aime = tmp_path / "aime.jsonl"
    aime.write_text(json.dumps({"ID": "2024-I-1", "Problem": "Find n.", "Answer": 204}) + "\n")
    assert load_suite(str(aime))[1][0].answer == "204"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json\n", "line 1 is not JSON"),
        ('{"problem": "x"}\n', "needs a 'problem' text and an 'answer'"),
        ("[1, 2]\n", "not a JSON object"),
        ("\n", "holds no problems"),
    ],
)
def test_bad_suites_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_suite(str(path))
    with pytest.raises(UsageError, match="no suite"):
        load_suite(str(tmp_path / "missing.jsonl"))


def _sample(problem, k, correct, extracted, budget=None, thinking=100):
    return Sample(problem, k, budget, extracted, correct, thinking, 10, thinking + 10, False, "stop", 2.0, 50.0)


def test_pass_at_1_is_the_mean_over_samples_and_majority_votes(tmp_path):
    run = Run(tmp_path, {})
    run.samples = [
        _sample("a", 0, True, "4"), _sample("a", 1, True, "4.0"), _sample("a", 2, False, "5"), _sample("a", 3, False, None),
        _sample("b", 0, False, "1"), _sample("b", 1, False, "1"), _sample("b", 2, True, "2"), _sample("b", 3, True, "2"),
    ]  # fmt: skip
    (result,) = summarise(run)
    a, b = result.per_problem
    assert (a.pass_at_1, a.majority, a.majority_answer) == (0.5, True, "4")  # "4" and "4.0" vote together
    assert (b.pass_at_1, b.majority) == (0.5, False)  # a tie goes to the first answer given
    assert result.pass_at_1 == 0.5 and result.majority == 0.5 and result.samples == 8
    assert result.thinking_tokens == 100 and result.decode_tps == pytest.approx(8 * 110 / 16)


def test_runs_resume_and_refuse_other_settings(tmp_path):
    meta = {"model": "m", "quant": "Q4", "suite": "basic", "temperature": 0.6, "top_p": 0.95, "max_tokens": 9,
            "seed": 0}  # fmt: skip
    run = open_run(tmp_path / "r", meta)
    run.append(_sample("a", 0, True, "4"))
    with (tmp_path / "r" / "samples.jsonl").open("a") as f:
        f.write('{"problem": "b", "sam')  # a torn line: the process died writing it
    again = open_run(tmp_path / "r", meta)
    assert again.done_keys() == {("a", 0, None)}
    with pytest.raises(UsageError, match="other settings: temperature 0.6"):
        open_run(tmp_path / "r", {**meta, "temperature": 0.7})
    assert open_run(tmp_path / "r", meta, fresh=True).samples == []
    with pytest.raises(UsageError, match="no eval run"):
        load_run(tmp_path / "nothing")
    assert sample_seed(0, "a", 1) != sample_seed(0, "a", 0) == sample_seed(0, "a", 0)


@pytest.mark.parametrize(
    "lines",
    [
        ['{"meta": 3}'],
        ["[]"],
        ['{"meta": {}}', '{"problem": "a", "sample": "zero"}'],
        ['{"meta": {}}', "[1, 2]"],
    ],
)
def test_a_file_that_is_not_a_run_is_one_line(tmp_path, lines):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match="not a (localr1 eval run|sample of a localr1 eval run)"):
        load_run(tmp_path)


def test_paired_p_values():
    assert paired_p_value([0, 0, 0]) == 1.0
    assert paired_p_value([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)  # exact: 2 of 32 sign patterns as extreme
    assert paired_p_value([1, -1, 1, -1]) == 1.0
    assert paired_p_value([1.0] * 30) < 0.001  # sampled: far beyond chance
    assert 0.5 < paired_p_value([1.0, -1.0] * 15 + [1.0]) <= 1.0


def test_compare_pairs_by_problem(tmp_path):
    a, b = Run(tmp_path, {"model": "A"}), Run(tmp_path, {"model": "B"})
    a.samples = [_sample(p, 0, False, "0") for p in "abcdef"]
    b.samples = [_sample(p, 0, True, "1") for p in "abcdefg"]  # g: only in B, left out
    (row,) = compare(a, b)
    assert (row.problems, row.a, row.b, row.difference) == (6, 0.0, 1.0, 1.0)
    assert row.p_value == pytest.approx(2 / 64)
