"""A small model that drafts for a large one (speculative decoding, ``--speculate draft``).

The draft model has its own llama.cpp context, kept in step with the target's: before each proposal the
tokens it has not seen (the prompt, the tokens the target accepted or chose) are decoded after the longest
prefix its KV cache shares with the target's context, then it drafts ``k`` tokens one decode at a time.
With a temperature and no grammar it samples them from its own nucleus distribution at the request's
settings and hands those distributions on (``speculative.accept`` needs q); otherwise it drafts its argmax
(a point mass).

A draft must speak the target's vocabulary: the same tokenizer type, the same BOS/EOS tokens, vocabulary
sizes within 128 of each other (R1's Qwen distills: 151,936 vs 152,064, the extra rows unused) and the same
text for every token both have: :func:`check_compatible`, llama.cpp's own test
(``common_speculative_are_compatible``), with one line naming the difference.
"""

from __future__ import annotations

from typing import Any

from localr1.errors import EngineError, UsageError

# Imported inside the functions that use them: numpy (heavy), localr1.engine.nucleus (numpy).

VOCAB_SIZE_SLACK = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
FIRST_CHECKED_TOKEN = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID: the first few may be control tokens


def check_compatible(target: Any, draft: Any) -> None:
    """A UsageError (one line) unless ``draft`` can draft for ``target`` (two LlamaCppEngines)."""
    t, d = target.vocab_facts(), draft.vocab_facts()
    name = draft.info.name or draft.path.name

    def refuse(what: str) -> UsageError:
        return UsageError(
            f"{name} cannot draft for {target.info.name or target.path.name}: {what}",
            hint="A draft needs the target's tokenizer (for R1's Qwen distills: r1:1.5b; for r1:70b: r1:8b).",
        )

    if t["type"] != d["type"]:
        raise refuse("their tokenizers are of different kinds")
    if abs(t["n_vocab"] - d["n_vocab"]) > VOCAB_SIZE_SLACK:
        raise refuse(f"their vocabularies have {t['n_vocab']:,} and {d['n_vocab']:,} tokens")
    for key, what in (("bos", "start-of-text"), ("eos", "end-of-text")):
        if t[key] != d[key]:
            raise refuse(f"their {what} tokens differ ({t[key]} vs {d[key]})")
    for token in range(FIRST_CHECKED_TOKEN, min(t["n_vocab"], d["n_vocab"])):
        if target.token_text(token) != draft.token_text(token):
            raise refuse(
                f"token {token} is {target.token_text(token)!r} in one and {draft.token_text(token)!r} in the other"
            )


class DraftModel:
    """Proposes tokens for a target with the same vocabulary (``propose``, as ``speculative.Speculator``
    asks); owns its engine, whose KV cache follows the target's context (``LlamaCppEngine.prefill``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.info = engine.info
        self._ctx = engine.context
        self._read = engine.logits_reader()
        self._sampler: Any = None
        self._sampler_for: Any = None

    def propose(self, tokens: list[int], k: int, sampling: Any) -> tuple[list[int], list | None]:
        """Up to ``k`` tokens to follow ``tokens`` (the target's context, ending with the token it is about to
        decode), and the distributions they were drawn from (None: argmax drafts)."""
        import numpy as np

        room = self.engine.n_ctx - len(tokens) - 1
        k = min(k, room)
        if k <= 0:
            return [], None
        try:
            if self.engine.prefill(tokens) < 0:  # the engine is closing
                return [], None
            sampler = self._nucleus(sampling)
            drafts: list[int] = []
            dists: list | None = [] if sampler is not None else None
            for i in range(k):
                logits = self._read(self._ctx, -1)
                if sampler is None:
                    token = int(logits.argmax())
                else:
                    ids, probs = sampler.distribution(logits)
                    at = min(int(np.searchsorted(np.cumsum(probs), sampler.rng.random(), side="right")), len(ids) - 1)
                    token = int(ids[at])
                    dists.append((ids, probs))
                drafts.append(token)
                # an end of text ends the draft; the last draft needs no decode
                if self.engine.piece(token) is None or i == k - 1:
                    break
                self.engine.decode_one(token)
        except EngineError as exc:
            self.engine.reset()
            raise EngineError(f"the draft model failed: {exc.message}", hint="Run with --speculate ngram.") from None
        return drafts, dists

    def _nucleus(self, sampling: Any):
        """The draft's sampler at the request's settings, or None to draft argmaxes (greedy requests and
        grammars: the target then checks point masses)."""
        if sampling is None or sampling.temperature <= 0 or sampling.grammar or sampling.answer_grammar:
            return None
        if self._sampler_for is not sampling:
            from localr1.engine.nucleus import NucleusSampler

            seed = None if sampling.seed is None else (sampling.seed + 1) % 2**32  # not the target's draws
            self._sampler = NucleusSampler.for_sampling(self.engine.n_vocab, sampling, seed=seed)
            self._sampler_for = sampling
        return self._sampler

    def reset(self) -> None:
        self.engine.reset()

    def close(self) -> None:
        self.engine.close()
