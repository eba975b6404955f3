"""Continuous batching: several generations share one llama.cpp context and decode together.

``serve`` opens the model with ``slots`` sequences (``n_seq_max``, one unified KV cache of ``n_ctx`` cells,
each sequence bounded here to ``n_ctx / slots`` of them) and wraps it in a :class:`BatchedEngine`. One scheduler thread owns the context.
Each step it builds one ``llama_batch`` holding the next token of every generating sequence plus, in the
room left (``n_batch``), a chunk of the prompt of each newly admitted request, decodes it once, and chooses
every sequence's token from its own row of logits with that request's own sampler (the same greedy and
``localr1.engine.nucleus`` samplers as ``ask``; a seed gives the same tokens whatever else is in the batch).
This is what llama-server does: a request joins and leaves the batch between two steps.

``stream()`` has the ``Engine`` signature and may be called from many threads at once: a request waits
in line while every slot is busy (the server bounds that line), then its events arrive through a queue.
Closing the iterator early (a client that went away) cancels the request: its slot is free at the next
step. A slot keeps its KV cache after a request ends, and a new request goes to the free slot whose cache
shares the longest prefix with its prompt, so a chat's next turn only processes the new tokens.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from localr1.engine.backend import _LOG
from localr1.engine.base import common_prefix
from localr1.engine.generation import Generation
from localr1.engine.llama_cpp import put_token
from localr1.engine.speculative import MAX_DRAFT, Speculator
from localr1.errors import ContextOverflowError, EngineError, LocalR1Error
from localr1.events import Done, Event, FinishReason, Timings
from localr1.text.prompt import Prompt
from localr1.text.sampling import Sampling


@dataclass(eq=False)
class _Job:
    prompt: Prompt
    sampling: Sampling
    tokens: list[int]
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    slot: int = -1
    n_past: int = 0  # tokens of this sequence in the KV cache
    prefilling: bool = True
    last_token: int = -1  # chosen, to be decoded in the next step (-1: none)
    gen: Generation | None = None  # the per-token decisions, once admitted
    sample: Any = None
    chain: Any = None
    t_queued: float = 0.0
    t_admitted: float = 0.0
    t_first: float = 0.0  # the prompt's last chunk decoded: the first token can be chosen
    sample_s: float = 0.0
    n_prompt: int = 0  # the prompt's tokens (``tokens`` grows by every token decoded and what a budget appends)
    spec: Speculator | None = None  # n-gram drafting (engine/speculative.py), when the engine speculates
    drafted: list[int] = field(default_factory=list)  # drafts in the last batch, after last_token


class BatchedEngine:
    """An ``Engine`` over a ``LlamaCppEngine`` opened with ``n_seq`` > 1: requests decode together."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.info = engine.info
        self.slots = engine.n_seq
        self._lib = engine.lib
        # one KV cache for all sequences (kv_unified): each may use its share, so none crowds out another
        self.n_ctx_slot = self._lib.llama_n_ctx(engine.context) // self.slots
        self.n_batch = engine.n_batch
        # each sequence drafts from its own n-grams (a draft model would need a context of its own per slot)
        self.speculate = "off" if getattr(engine, "speculate", "off") == "off" else "ngram"
        self._cv = threading.Condition()
        self._pending: collections.deque[_Job] = collections.deque()
        self._active: dict[int, _Job] = {}  # slot -> job
        self._cached: list[list[int]] = [[] for _ in range(self.slots)]  # tokens in each slot's KV cache
        self._closing = threading.Event()
        self._seconds = 0.0  # the last decode's time
        self.steps = 0  # decode calls, and the sequences they carried (for the tests and benchmarks)
        self.rows = 0
        self._thread = threading.Thread(target=self._run, name="localr1-batch", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    # --- the Engine interface ------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._engine.tokenize(text, add_bos=add_bos)

    def end_tokens(self) -> list[int]:
        return self._engine.end_tokens()

    def reset(self) -> None:
        """Forget every idle slot's cache (a running request keeps its own)."""
        with self._cv:
            for slot in range(self.slots):
                if slot not in self._active:
                    self._cached[slot] = []

    @property
    def busy(self) -> int:
        """Requests generating now."""
        with self._cv:
            return len(self._active)

    def stream(self, prompt: Prompt, sampling: Sampling, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Generate as ``LlamaCppEngine.stream`` does; waits for a free slot first."""
        sampling.validate()
        if self._closing.is_set():
            raise EngineError("the model was closed", hint="Load it again.")
        tokens = self.tokenize(prompt.text, add_bos=prompt.add_bos)
        if len(tokens) >= self.n_ctx_slot:
            raise ContextOverflowError(
                f"the prompt is {len(tokens):,} tokens but a slot's context holds {self.n_ctx_slot:,}",
                hint="Shorten the conversation, or restart the server with a larger --ctx.",
            )
        job = _Job(prompt, sampling, tokens, cancel or threading.Event(), t_queued=time.perf_counter())
        with self._cv:
            self._pending.append(job)
            self._cv.notify()
        return self._events(job)

    def _events(self, job: _Job) -> Iterator[Event]:
        finished = False
        try:
            while True:
                item = job.out.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if isinstance(item, Done):
                    finished = True
                    return
        finally:
            if not finished:  # the consumer stopped early: free the slot at the next step
                job.cancel.set()
                with self._cv:
                    self._cv.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the scheduler (running requests end as cancelled), then free the model."""
        self._closing.set()
        self._engine.stop()  # a long prompt in llama_decode stops through the abort callback
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout)
        self._engine.close(timeout=timeout)

    def __enter__(self) -> BatchedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the scheduler -------------------------------------------------------------------------------
    def _run(self) -> None:
        engine, lib = self._engine, self._lib
        engine.lock.acquire()  # the context is this thread's until it ends: engine.close() waits for it
        batch = None
        try:
            batch = lib.llama_batch_init(self.n_batch, 0, 1)
            lib.llama_set_abort_callback(engine.context, engine.abort_callback, None)
            self._started.set()
            while True:
                with self._cv:
                    while not self._closing.is_set() and not self._active and not self._pending:
                        self._cv.wait()
                    if self._closing.is_set():
                        break
                    self._admit()
                self._drop_cancelled()
                if self._active:
                    self._step(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiting client must hear of it
            self._fail_all(exc if isinstance(exc, LocalR1Error) else EngineError(f"the scheduler failed: {exc}"))
        finally:
            self._started.set()
            self._fail_all(None)
            if batch is not None:
                lib.llama_batch_free(batch)
            engine.lock.release()

    def _admit(self) -> None:
        """Give waiting requests the free slots (called with the lock held)."""
        free = [s for s in range(self.slots) if s not in self._active]
        while free and self._pending:
            job = self._pending.popleft()
            if job.cancel.is_set():
                self._finish(job, "cancelled")
                continue
            # the free slot whose cache shares the longest prefix with this prompt (a chat's next turn)
            slot = max(free, key=lambda s: (common_prefix(self._cached[s], job.tokens), -s))
            free.remove(slot)
            self._start(job, slot)

    def _start(self, job: _Job, slot: int) -> None:
        engine, lib = self._engine, self._lib
        keep = min(common_prefix(self._cached[slot], job.tokens), len(job.tokens) - 1)
        if not lib.llama_memory_seq_rm(engine.memory, slot, keep, -1):
            lib.llama_memory_seq_rm(engine.memory, slot, -1, -1)  # this model's cache cannot be cut: start over
            keep = 0
        self._cached[slot] = job.tokens[:keep]
        job.slot, job.n_past = slot, keep
        job.t_admitted = time.perf_counter()
        job.n_prompt = len(job.tokens)
        try:
            job.gen = Generation(
                job.prompt, job.sampling, room=self.n_ctx_slot - len(job.tokens),
                close_token=engine.think_close_token, interval=engine.stream_interval_s,
            )  # fmt: skip
            job.chain, job.sample = engine.token_chooser(job.sampling, job.gen)
            if self.speculate != "off":
                job.spec = Speculator("ngram", costs=engine.draft_costs)
        except LocalR1Error as exc:
            job.out.put(exc)
            return
        self._active[slot] = job

    def _drop_cancelled(self) -> None:
        with self._cv:
            for job in [j for j in self._active.values() if j.cancel.is_set()]:
                self._finish(job, "cancelled")

    def _step(self, batch: Any) -> None:
        """One llama_decode: a token for each generating sequence (and its drafts), then prompt chunks in the
        room left."""
        lib, ctx = self._lib, self._engine.context
        n = 0
        outputs: list[tuple[list[int], _Job]] = []  # (rows of logits, job)
        prefill: list[tuple[_Job, int]] = []  # (job, tokens of its prompt in this batch)
        jobs = list(self._active.values())
        decoding = [job for job in jobs if not job.prefilling]
        spare = self.n_batch - len(decoding)  # batch room for drafts, shared in turn
        for job in decoding:
            job.tokens.append(job.last_token)  # the sequence so far (taken back if the decode fails)
            job.drafted = self._drafts(job, spare)
            spare -= len(job.drafted)
            rows = []
            for j, token in enumerate((job.last_token, *job.drafted)):
                put_token(batch, n, token, job.n_past + j, job.slot, True)
                rows.append(n)
                n += 1
            outputs.append((rows, job))
        for job in jobs:
            if job.prefilling and n < self.n_batch:
                take = min(len(job.tokens) - job.n_past, self.n_batch - n)
                last = job.n_past + take == len(job.tokens)
                for i in range(take):
                    put_token(
                        batch, n + i, job.tokens[job.n_past + i], job.n_past + i, job.slot, last and i == take - 1
                    )
                if last:
                    outputs.append(([n + take - 1], job))
                prefill.append((job, take))
                n += take
        batch.n_tokens = n
        t0 = time.perf_counter()
        rc = lib.llama_decode(ctx, batch)
        self.steps += 1
        self.rows += n
        if rc != 0:
            for job in decoding:
                job.tokens.pop()
            self._failed_step(rc, jobs)
            return
        now = time.perf_counter()
        self._seconds = now - t0
        for job, take in prefill:
            self._cached[job.slot].extend(job.tokens[job.n_past : job.n_past + take])
            job.n_past += take
            if job.n_past == len(job.tokens):
                job.prefilling, job.gen.t_last = False, now
                job.t_first = job.t_first or now  # (text a thinking budget appended is decoded this way too)
        for job in decoding:
            self._cached[job.slot].append(job.last_token)
            job.n_past += 1
        for rows, job in outputs:
            self._choose(job, rows, ctx)

    def _drafts(self, job: _Job, spare: int) -> list[int]:
        """The job's n-gram drafts for this step, within the batch room and its own token budget."""
        if job.spec is None:
            return []
        gen = job.gen
        room = min(spare, MAX_DRAFT, gen.budget - gen.generated - 1, self.n_ctx_slot - job.n_past - 2)
        return job.spec.propose(job.tokens, room)[0]

    def _choose(self, job: _Job, rows: list[int], ctx: Any) -> None:
        """The job's next tokens from its rows of logits (one, or one per draft and one more: each draft
        accepted while the token drawn equals it, engine/speculative.py), and what its generation decides."""
        clock = time.perf_counter
        drafted, accepted = job.drafted, 0
        for i, row in enumerate(rows):
            t = clock()
            try:
                token = job.sample(job.chain, ctx, row)
            except LocalR1Error as exc:  # this request's grammar has no way on: it ends, the others go on
                with self._cv:
                    self._finish(job, None, exc)
                return
            job.sample_s += clock() - t
            step = job.gen.choose(token, self._engine.piece(token))
            in_kv = i < len(drafted) and token == drafted[i] and step.decode
            if in_kv:  # decoded already, as a draft
                accepted += 1
                job.tokens.append(token)
                self._cached[job.slot].append(token)
                job.n_past += 1
                if step.append is None and step.finish is None:
                    for event in step.events:
                        job.out.put(event)
                    continue
            break
        if job.spec is not None:
            job.spec.verified(len(drafted), accepted, self._seconds)
        if drafted and accepted < len(drafted):  # the drafts after the run leave the KV cache
            self._lib.llama_memory_seq_rm(self._engine.memory, job.slot, job.n_past, -1)
        job.drafted = []
        job.last_token = token if step.decode and step.append is None and not in_kv else -1
        for event in step.events:
            job.out.put(event)
        if step.append is not None:  # it streams (marked forced) and goes into the sequence in the next steps
            ids, events = self._engine.appended(job.gen, step.append)
            if events is None:
                with self._cv:
                    self._finish(job, "length")
                return
            for event in events:
                job.out.put(event)
            job.tokens.extend(([token] if step.decode and not in_kv else []) + ids)
            job.prefilling = True
        if step.finish is not None:
            with self._cv:
                self._finish(job, step.finish)

    def _failed_step(self, rc: int, jobs: list[_Job]) -> None:
        with self._cv:
            if rc == 2:  # aborted: the server is closing
                for job in jobs:
                    self._finish(job, "cancelled")
            elif rc == 1:  # no KV room (each slot is bounded to its share, so this is not expected)
                for job in jobs:
                    self._finish(job, "length")
            else:
                error = EngineError(f"llama.cpp failed while generating (code {rc}): {_LOG.tail(2)}")
                for job in jobs:
                    self._finish(job, None, error)

    def _finish(self, job: _Job, reason: FinishReason | None, error: BaseException | None = None) -> None:
        """End a job: its last text, then Done (or the error); its slot is free (called with the lock)."""
        if self._active.get(job.slot) is job:
            del self._active[job.slot]
            if job.prefilling or error is not None:  # a half-processed prompt is not worth keeping
                self._lib.llama_memory_seq_rm(self._engine.memory, job.slot, -1, -1)
                self._cached[job.slot] = []
        if job.chain is not None:
            self._lib.llama_sampler_free(job.chain)
            job.chain = None
        if error is not None:
            job.out.put(error)
            return
        gen = job.gen or Generation(job.prompt, job.sampling, room=0)  # (cancelled before its slot)
        first = job.t_first or job.t_admitted or job.t_queued
        timings = Timings(
            load_s=self.info.load_s,
            prefill_s=max(first - (job.t_admitted or first), 0.0),
            decode_s=max(gen.t_last - first, 0.0) if job.t_first else 0.0,
            thinking_s=gen.assembler.thinking_s,
            prompt_tokens=job.n_prompt or len(job.tokens),
            decode_tokens=gen.generated,
            sample_ms=job.sample_s * 1000,
            speculative=job.spec.stats if job.spec is not None else None,
        )
        for event in gen.done(reason or "stop", prompt_tokens=job.n_prompt or len(job.tokens), timings=timings):
            job.out.put(event)

    def _fail_all(self, error: BaseException | None) -> None:
        with self._cv:
            for job in [*self._active.values(), *self._pending]:
                self._finish(job, "cancelled" if error is None else None, error)
            self._active.clear()
            self._pending.clear()
