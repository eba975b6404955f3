"""Final answers of math problems: the last ``\\boxed{...}`` of a reply, and whether it equals the reference.

Extraction is ours (balanced braces, ``\\boxed`` / ``\\fbox``, the last box wins: R1 sometimes boxes an
intermediate result first). Equivalence is Hugging Face's math-verify (the checker open-r1 and lighteval
use: numbers, fractions, symbolic expressions, intervals, sets, LaTeX spacing and units); a plain string
comparison after light normalisation decides for text answers math-verify cannot parse.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Imported inside the functions that use them: math_verify (heavy to import, and not needed by every command).

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_answers(text: str) -> list[str]:
    """Every ``\\boxed{...}`` in ``text``, in order, with nested braces kept; an unclosed box is dropped."""
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\" and i + 1 < len(text):  # \{ and \} are characters, not braces
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1].strip())
    return out


def final_answer(text: str) -> str | None:
    """The last boxed answer of a reply, or None when it boxed nothing."""
    boxes = boxed_answers(text)
    return boxes[-1] if boxes else None


def _normalise(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\[,;:! ]|~|\$", "", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text).rstrip(".").lower()
    return text


@lru_cache(maxsize=4096)
def _parsed(latex: str):
    from math_verify import LatexExtractionConfig, parse

    return parse(f"${latex}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=5)


def is_equivalent(predicted: str | None, reference: str) -> bool:
    """Whether a boxed answer equals the reference answer (both LaTeX or plain text)."""
    if predicted is None:
        return False
    if _normalise(predicted) == _normalise(reference):
        return True
    from math_verify import verify

    try:
        gold, pred = _parsed(reference), _parsed(predicted)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=5))
    except Exception:  # noqa: BLE001 - a checker failure on odd input (a 5,000-digit number) is "not shown equal"
        return False
