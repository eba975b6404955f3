"""What a grammar after the thinking costs: decode speed of a structured answer against a free one.

As ``serve`` runs a request with ``response_format`` / ``format`` / a required tool call: R1 sampling
(temperature 0.6, top-p 0.95, seeded), the thinking free and the answer after ``</think>`` drawn through
llama.cpp's grammar (``Sampling.answer_grammar``). Each case decodes ``--tokens`` tokens of the answer (the
reply starts after an empty thinking block, so every token is an answer token) with and without the
grammar, taking turns; the rate is decode tokens/s as ``ask --stats`` reports it. Two models:

* SmolLM2-135M-Instruct (a trained model, asked for JSON): most tokens it draws already fit the grammar, and
  only those it draws outside it pay for the grammar over the whole vocabulary.
* the tiny random-weight R1 model (R1's 152k vocabulary): nearly every token it draws is refused, so this
  is the worst case, the cost of llama.cpp's grammar matching all 152k token texts.

And the thinking: a reply that thinks for all its ``--tokens`` (the random model), with the grammar set and
without (``thinking``): the grammar must cost nothing before ``</think>``.

Usage::

    python benchmarks/structured.py [--reps 5] [--tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from localr1.engine.llama_cpp import LlamaCppEngine  # noqa: E402
from localr1.engine.structured import json_grammar, tool_call_grammar  # noqa: E402
from localr1.events import collect  # noqa: E402
from localr1.text.prompt import Message, Prompt, continue_reply, render, user_turn  # noqa: E402
from localr1.text.sampling import Sampling  # noqa: E402
from localr1.text.tools import Tool  # noqa: E402

QUESTION = (
    "Describe three European capitals as a JSON object with a key per city and, for each, its country, "
    "population and two landmarks."
)
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]},
)


def _rate(engine, prompt: Prompt, sampling: Sampling) -> tuple[float, int, str]:
    _, answer, done = collect(engine.stream(prompt, sampling))
    t = done.timings
    return t.decode_tokens / t.decode_s, t.decode_tokens, answer


def _answer_prompt(engine) -> Prompt:
    """The reply begins after the thinking: every token decoded is an answer token."""
    fmt = engine.info.chat_format
    if fmt.reasoning:
        return continue_reply([Message("user", QUESTION), Message("assistant", "<think>\n\n</think>\n\n")], fmt)
    return render(user_turn(QUESTION), fmt)


def case(path: Path, args, grammar: str, *, thinking: bool = False) -> dict:
    with LlamaCppEngine(path, n_ctx=2048) as engine:
        prompt = render(user_turn(QUESTION), engine.info.chat_format) if thinking else _answer_prompt(engine)
        # thinking: the random model does not end its thinking within --tokens, so every token is thinking
        base = Sampling(max_tokens=args.tokens, seed=1)
        free, constrained, kept = [], [], []
        _rate(engine, prompt, base)  # warm-up
        for rep in range(args.reps):
            seeded = replace(base, seed=rep + 1)
            free.append(_rate(engine, prompt, seeded)[0])
            rate, n, answer = _rate(engine, prompt, replace(seeded, answer_grammar=grammar))
            constrained.append(rate)
            kept.append(n)
    f, c = statistics.median(free), statistics.median(constrained)
    return {
        "model": path.name,
        "free_tok_s": round(f, 1),
        "grammar_tok_s": round(c, 1),
        "ratio": round(c / f, 3),
        "grammar_tokens": kept,
        "last_answer": answer[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import model_factory

    smollm2, tiny = model_factory.smollm2_path(), model_factory.tiny_r1_path()
    results = {
        "smollm2_json": case(smollm2, args, json_grammar()),
        "tiny_r1_json": case(tiny, args, json_grammar()),
        "tiny_r1_tool_call": case(tiny, args, tool_call_grammar([WEATHER])),
        "tiny_r1_thinking": case(tiny, args, json_grammar(), thinking=True),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name:20s} free {r['free_tok_s']:8.1f} tok/s  grammar {r['grammar_tok_s']:8.1f} tok/s  x{r['ratio']}")


if __name__ == "__main__":
    main()
