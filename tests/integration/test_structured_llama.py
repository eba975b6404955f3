"""Structured output after the thinking (engine/structured.py) through llama.cpp with the tiny random R1
model: its thinking stays the noise it writes, its answer follows the schema, with or without speculation,
alone or batched; a thinking budget still ends the thinking first."""

from __future__ import annotations

import json

import pytest

from localr1.engine.batching import BatchedEngine
from localr1.engine.llama_cpp import LlamaCppEngine
from localr1.engine.structured import json_grammar, schema_grammar
from localr1.events import collect
from localr1.text.prompt import render, user_turn
from localr1.text.sampling import Sampling

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "unit": {"type": "string", "maxLength": 8}},
    "required": ["answer", "unit"],
}


def _check(reply) -> None:
    thinking, answer, done = reply
    value = json.loads(answer)
    assert set(value) == {"answer", "unit"} and isinstance(value["answer"], int) and len(value["unit"]) <= 8
    assert thinking.strip() and not thinking.lstrip().startswith("{")
    assert done.finish_reason == "stop" and done.thinking.cut


@pytest.mark.parametrize("speculate", ["off", "ngram"])
def test_the_answer_follows_the_schema_and_the_thinking_is_free(tiny_r1, speculate):
    with LlamaCppEngine(tiny_r1, n_ctx=1024, speculate=speculate) as engine:
        prompt = render(user_turn("What is 6*7?"), engine.info.chat_format)
        for seed in range(3):
            sampling = Sampling(seed=seed, max_tokens=300, think_budget=24, answer_grammar=schema_grammar(SCHEMA))
            _check(collect(engine.stream(prompt, sampling)))
        greedy = Sampling(temperature=0, max_tokens=300, think_budget=24, answer_grammar=json_grammar())
        _, answer, done = collect(engine.stream(prompt, greedy))
        assert done.finish_reason == "length" or isinstance(json.loads(answer), dict)


def test_batched_requests_each_keep_their_own_grammar(tiny_r1):
    import threading

    engine = BatchedEngine(LlamaCppEngine(tiny_r1, n_ctx=4 * 512, n_seq=4, speculate="ngram"))
    try:
        replies: list = [None] * 4

        def run(i: int) -> None:
            prompt = render(user_turn(f"Question {i}?"), engine.info.chat_format)
            grammar = schema_grammar(SCHEMA) if i % 2 == 0 else None
            sampling = Sampling(seed=i, max_tokens=120, think_budget=16, answer_grammar=grammar)
            replies[i] = collect(engine.stream(prompt, sampling))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.close()
    _check(replies[0])
    _check(replies[2])
    for _, answer, _ in (replies[1], replies[3]):  # no grammar: the model's own noise
        with pytest.raises(ValueError):
            json.loads(answer)


def test_a_model_that_does_not_think_answers_in_json_from_its_first_token(smollm2):
    """No <think> to wait for (SmolLM2's ChatML): the grammar applies at once, and no </think> is asked for."""
    with LlamaCppEngine(smollm2, n_ctx=1024) as engine:
        prompt = render(user_turn("Give the answer to 6*7 and its unit."), engine.info.chat_format)
        assert not prompt.opens_thinking
        thinking, answer, done = collect(
            engine.stream(prompt, Sampling(seed=1, max_tokens=200, answer_grammar=schema_grammar(SCHEMA)))
        )
    value = json.loads(answer)
    assert thinking == "" and set(value) == {"answer", "unit"} and done.finish_reason == "stop"
