"""Final-answer extraction and checking, on hand-made cases with their expected verdicts."""

from __future__ import annotations

import pytest

from localr1.evaluation.answers import boxed_answers, final_answer, is_equivalent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $\\boxed{42}$.", "42"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("first \\boxed{3}, then on reflection \\boxed{4}", "4"),  # the last box wins
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are characters
        ("\\fbox{7}", "7"),
        ("\\boxed {  12 }", "12"),
        ("no box at all: 42", None),
        ("\\boxed{unclosed", None),
        ("\\boxed{\\text{Yes}}", "\\text{Yes}"),
    ],
)
def test_extraction(text, expected):
    assert final_answer(text) == expected


def test_every_box_in_order():
    assert boxed_answers("\\boxed{1} and \\boxed{x^{2}} and \\boxed{") == ["1", "x^{2}"]


@pytest.mark.parametrize(
    ("predicted", "reference", "verdict"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
        ("\\tfrac34", "\\frac{3}{4}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\sqrt{2}", "1.41", False),
        ("50\\%", "50", True),  # percent, as lighteval grades it
        ("10\\text{ cm}", "10", True),  # units
        ("x = 3", "3", True),
        ("1,000", "1000", True),
        ("3.0", "3", True),
        ("-\\frac{1}{3}", "-1/3", True),
        ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("\\{1,2\\}", "\\{2,1\\}", True),  # sets
        ("(1, 2]", "(1,2]", True),  # intervals, LaTeX spacing
        ("[1,2]", "(1,2)", False),
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("\\text{Yes}", "yes", True),  # text answers
        ("\\text{(B)}", "(B)", True),
        ("7", "8", False),
        ("x^2 + 2x + 1", "(x+1)^2", True),  # symbolic equivalence
        ("x^2 + 1", "(x+1)^2", False),
        (None, "4", False),  # nothing boxed
        ("", "4", False),
    ],
)
def test_equivalence(predicted, reference, verdict):
    assert is_equivalent(predicted, reference) is verdict
