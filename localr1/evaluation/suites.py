"""Problems with known answers: localr1's own suite, and any JSONL file of ``problem`` / ``answer`` records.

The built-in suite is written for localr1 and every answer is computed here, by the code beside the
question, never typed by hand: arithmetic, number theory, algebra and combinatorics at three levels.
The common public sets load as JSONL: MATH-500 (HuggingFaceH4/MATH-500: ``problem``, ``answer``,
``unique_id``, ``level``, ``subject``) and AIME 2024 (e.g. HuggingFaceH4/aime_2024 or
Maxwell-Jia/AIME_2024: ``problem`` or ``Problem``, ``answer`` or ``Answer``, ``id`` or ``ID``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from localr1.errors import UsageError

MAX_SUITE_BYTES = 64 << 20
MAX_PROBLEM_CHARS = 20_000


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str  # LaTeX or plain text, as it would be boxed
    level: int | None = None
    topic: str | None = None


def _frac(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _divisors(n: int) -> int:
    return sum(1 for d in range(1, n + 1) if n % d == 0)


def _digit_sum_count(digits: int, total: int) -> int:
    lo, hi = 10 ** (digits - 1), 10**digits
    return sum(1 for n in range(lo, hi) if sum(map(int, str(n))) == total)


def _builtin() -> list[Problem]:
    p: list[tuple[str, int, str, str, object]] = [
        # arithmetic
        ("arith-1", 1, "arithmetic", "What is $347 \\times 29$?", 347 * 29),
        ("arith-2", 1, "arithmetic", "What is $1001 - 387 + 56$?", 1001 - 387 + 56),
        ("arith-3", 1, "arithmetic", "What is $\\frac{3}{4} + \\frac{5}{6}$? Give a fraction in lowest terms.",
         _frac(Fraction(3, 4) + Fraction(5, 6))),
        ("arith-4", 2, "arithmetic", "What is the sum of the digits of $2^{20}$?", sum(map(int, str(2**20)))),
        ("arith-5", 2, "arithmetic", "What is $\\frac{1}{2} \\cdot \\frac{2}{3} \\cdot \\frac{3}{4} \\cdots "
         "\\frac{99}{100}$?", _frac(math.prod(Fraction(k, k + 1) for k in range(1, 100)))),
        ("arith-6", 2, "arithmetic", "What is $1 + 2 + 3 + \\cdots + 250$?", sum(range(1, 251))),
        ("arith-7", 3, "arithmetic", "What is the sum of all odd numbers from 1 to 999?", sum(range(1, 1000, 2))),
        ("arith-8", 3, "arithmetic", "What is $\\frac{1}{1 \\cdot 2} + \\frac{1}{2 \\cdot 3} + \\cdots + "
         "\\frac{1}{49 \\cdot 50}$?", _frac(sum(Fraction(1, k * (k + 1)) for k in range(1, 50)))),
        ("arith-9", 3, "arithmetic", "How many trailing zeros does $100!$ have?",
         len(str(math.factorial(100))) - len(str(math.factorial(100)).rstrip("0"))),
        # number theory
        ("nt-1", 1, "number theory", "What is the greatest common divisor of 84 and 126?", math.gcd(84, 126)),
        ("nt-2", 1, "number theory", "What is the least common multiple of 12, 18 and 30?", math.lcm(12, 18, 30)),
        ("nt-3", 1, "number theory", "What is the remainder when $3^{5}$ is divided by 7?", pow(3, 5, 7)),
        ("nt-4", 2, "number theory", "How many positive divisors does 360 have?", _divisors(360)),
        ("nt-5", 2, "number theory", "What is the remainder when $3^{100}$ is divided by 7?", pow(3, 100, 7)),
        ("nt-6", 2, "number theory", "What is the largest prime factor of 2023?", _largest_prime_factor(2023)),
        ("nt-7", 3, "number theory", "What are the last two digits of $7^{2024}$? Give them as a number.",
         pow(7, 2024, 100)),
        ("nt-8", 3, "number theory", "How many integers from 1 to 1000 are divisible by neither 3 nor 5?",
         sum(1 for n in range(1, 1001) if n % 3 and n % 5)),
        ("nt-9", 3, "number theory", "What is the sum of all positive divisors of 496?",
         sum(d for d in range(1, 497) if 496 % d == 0)),
        # algebra
        ("alg-1", 1, "algebra", "Solve for $x$: $3x + 7 = 31$.", Fraction(31 - 7, 3)),
        ("alg-2", 1, "algebra", "If $x + y = 10$ and $x - y = 4$, what is $xy$?", ((10 + 4) // 2) * ((10 - 4) // 2)),
        ("alg-3", 1, "algebra", "What is the value of $2a^2 - 3b$ when $a = 4$ and $b = 5$?", 2 * 4**2 - 3 * 5),
        ("alg-4", 2, "algebra", "What is the sum of the roots of $x^2 - 13x + 40 = 0$?", 13),
        ("alg-5", 2, "algebra", "What is the product of the roots of $2x^2 + 7x - 15 = 0$?",
         _frac(Fraction(-15, 2))),
        ("alg-6", 2, "algebra", "An arithmetic sequence starts 5, 11, 17, ... What is its 40th term?", 5 + 39 * 6),
        ("alg-7", 3, "algebra", "If $x + \\frac{1}{x} = 5$, what is $x^3 + \\frac{1}{x^3}$?", 5**3 - 3 * 5),
        ("alg-8", 3, "algebra", "What is the sum of the first 10 terms of the geometric sequence 3, 6, 12, ...?",
         sum(3 * 2**k for k in range(10))),
        ("alg-9", 3, "algebra", "For how many integers $n$ is $n^2 - 10n + 21 < 0$?",
         sum(1 for n in range(-100, 100) if n * n - 10 * n + 21 < 0)),
        # combinatorics
        ("comb-1", 1, "combinatorics", "In how many ways can 3 people be chosen from 10?", math.comb(10, 3)),
        ("comb-2", 1, "combinatorics", "In how many ways can the letters of the word MATH be arranged?",
         math.factorial(4)),
        ("comb-3", 1, "combinatorics", "How many subsets does a set with 7 elements have?", 2**7),
        ("comb-4", 2, "combinatorics", "In how many distinct ways can the letters of BANANA be arranged?",
         math.factorial(6) // (math.factorial(3) * math.factorial(2))),
        ("comb-5", 2, "combinatorics", "How many 4-digit positive integers have digits that sum to 9?",
         _digit_sum_count(4, 9)),
        ("comb-6", 2, "combinatorics", "Two fair dice are rolled. What is the probability that the sum is 7?",
         _frac(Fraction(sum(1 for a, b in itertools.product(range(1, 7), repeat=2) if a + b == 7), 36))),
        ("comb-7", 3, "combinatorics", "How many ways are there to climb a staircase of 12 steps taking 1 or 2 "
         "steps at a time?", _steps(12)),
        ("comb-8", 3, "combinatorics", "How many lattice paths go from $(0,0)$ to $(6,4)$ using unit steps right "
         "or up?", math.comb(10, 4)),
        ("comb-9", 3, "combinatorics", "How many permutations of 1, 2, 3, 4, 5 leave no number in its own place?",
         sum(1 for q in itertools.permutations(range(5)) if all(q[i] != i for i in range(5)))),
    ]  # fmt: skip
    out = []
    for pid, level, topic, text, answer in p:
        value = _frac(answer) if isinstance(answer, Fraction) else str(answer)
        out.append(Problem(pid, text, value, level, topic))
    return out


def _largest_prime_factor(n: int) -> int:
    factor, d = 1, 2
    while d * d <= n:
        while n % d == 0:
            factor, n = d, n // d
        d += 1
    return max(factor, n) if n > 1 else factor


def _steps(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


SUITES = {"basic": "localr1's own: 36 problems, arithmetic to combinatorics, three levels (answers computed)"}


def load_suite(spec: str | None) -> tuple[str, list[Problem]]:
    """A built-in suite by name, or a JSONL file; (its name, its problems)."""
    spec = spec or "basic"
    if spec in SUITES:
        return spec, _builtin()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(
            f"no suite {spec!r}", hint=f"Give a JSONL file with problem/answer fields, or one of: {', '.join(SUITES)}."
        )
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise UsageError(f"{path} is larger than {MAX_SUITE_BYTES >> 20} MiB", hint="Split it, or use --limit.")
    problems = []
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path.name} line {n} is not JSON: {exc.msg}") from None
            except RecursionError:
                raise UsageError(f"{path.name} line {n} is nested too deeply to be a problem") from None
            except ValueError:  # a number of more than 4,300 digits: Python refuses to convert it
                raise UsageError(
                    f"{path.name} line {n} holds a number of more than 4,300 digits",
                    hint='Write a long answer as a string: "answer": "123...".',
                ) from None
            if not isinstance(record, dict):
                raise UsageError(f"{path.name} line {n} is not a JSON object")
            text = record.get("problem", record.get("Problem", record.get("question")))
            answer = record.get("answer", record.get("Answer"))
            if not isinstance(text, str) or not text.strip() or answer is None or isinstance(answer, dict | list):
                raise UsageError(
                    f"{path.name} line {n} needs a 'problem' text and an 'answer'",
                    hint="MATH-500 and AIME releases use problem/answer (or Problem/Answer).",
                )
            if len(text) > MAX_PROBLEM_CHARS:
                raise UsageError(f"{path.name} line {n}: the problem is longer than {MAX_PROBLEM_CHARS:,} characters")
            pid = str(record.get("unique_id", record.get("id", record.get("ID", f"line-{n}"))))
            if pid in seen:
                pid = f"{pid}#{n}"
            seen.add(pid)
            level = record.get("level")
            problems.append(
                Problem(pid, text, str(answer), level if isinstance(level, int) else None, record.get("subject"))
            )
    if not problems:
        raise UsageError(f"{path} holds no problems")
    return path.stem, problems
