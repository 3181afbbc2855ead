"""The generation engine: one worker thread owns the model and batches concurrent requests.

Why: a PyTorch model is not a thread-safe object to drive from many request handlers, and running one
`generate()` per request wastes the accelerator (and, for small models, Python overhead per step).
Here every request is queued; a single worker thread runs a hand-written decode loop over a batch of
sequences, each with its own sampling parameters, stop strings and token budget, and streams each
sequence's text as it is produced. Requests that arrive while a batch runs join it at the next step
(continuous batching): the batch is rebuilt by one forward pass over the prompts and the tokens
generated so far, so no cache internals of any transformers version are touched. Finished sequences
leave the batch through the cache's public `batch_select_indices` where the cache has it.
Classification requests go through the same thread, between decode steps.

Shared serving (a ModelServer): the base model stays unmerged and LoRA adapters are loaded and unloaded at
run time, each request naming one. peft's mixed-batch forward (`adapter_names`, one per row) lets requests
of different adapters share a batch. Loading, swapping and unloading run on the worker thread between
steps (the model is never changed under a forward pass); a name is switched to a new version atomically,
and the old version is deleted only once no queued or running sequence uses it, so a request in flight
during a swap finishes on the version it started with.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import torch

from finetune_trainer.serving.server.decoding import TextStream, adjust_logits, choose_next_tokens, token_logprobs
from finetune_trainer.serving.server.events import AdapterInfo, Failed, SamplingParams, Sink, TokenLogprob
from finetune_trainer.serving.server.loader import LoadedModel
from finetune_trainer.serving.server.sequences import (
    Classification,
    RequestHandle,
    Sequence,
    advance,
    base_of,
    has_padding,
)

log = logging.getLogger(__name__)


class Engine:
    """Serves one loaded model from one worker thread; `start()` before submitting, `stop()` at exit."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int = 8) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self._pending: deque[Sequence] = deque()
        self._classifications: deque[Classification] = deque()
        self._controls: deque[Callable[[], None]] = deque()  # adapter loads and unloads, on this thread
        self._adapters: dict[str, tuple[str, AdapterInfo]] = {}  # served name -> (peft adapter name, info)
        self._retiring: set[str] = set()  # peft adapters no longer named, deleted once unused
        self._versions = 0
        self._batch: list[Sequence] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        parameters = inspect.signature(base_of(loaded.model).forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; 4.x knows only the old name
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def start(self) -> Engine:
        """Start the worker thread (a second call does nothing)."""
        if not self._thread.is_alive() and not self._stopping:
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Sink,
        incremental: bool = True,
        adapter: str | None = None,
    ) -> RequestHandle:
        """Queue one generation; `sink` gets TextDelta events, then exactly one Finished or Failed.

        With `incremental=False` the text comes as one TextDelta just before Finished: a caller that
        does not stream is then woken once per request instead of once per token (on a small CPU,
        waking the event loop thread at every step costs more than the step itself).
        """
        generator = None
        if params.temperature > 0:
            generator = torch.Generator()
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        sequence = Sequence(
            list(prompt_ids), params, sink, TextStream(self._decode, params.stop), generator, incremental
        )
        if params.constraint is not None:
            sequence.constraint = params.constraint()
        with self._wakeup:
            if adapter is not None:
                if adapter not in self._adapters:
                    sequence.done = True
                    sink(Failed(f"adapter {adapter!r} is not loaded"))
                    return RequestHandle(sequence)
                sequence.adapter = self._adapters[adapter][0]  # resolved under the lock a swap takes
            if self._stopping:
                sequence.done = True
                sink(Failed("the server is shutting down"))
            else:
                self._pending.append(sequence)
                self._wakeup.notify()
        return RequestHandle(sequence)

    def waiting(self) -> int:
        """How many sequences wait for a place in the batch."""
        with self._wakeup:
            return len(self._pending)

    def classify(self, rows: list[list[int]], callback: Callable[[list[list[float]] | Failed], None]) -> None:
        """Queue a classification of token-id rows; `callback` gets one probability vector per row."""
        with self._wakeup:
            self._classifications.append(Classification(rows, callback))
            self._wakeup.notify()

    def _decode(self, ids: list[int]) -> str:
        text: str = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not (self._stopping or self._pending or self._classifications or self._controls):
                    self._wakeup.wait()
                if self._stopping:
                    break
            self._run_controls()
            self._run_classifications()
            batch = self._admit([])
            if batch:
                try:
                    self._generate(batch)
                except Exception as error:  # one bad batch must not kill the server
                    log.exception("generation failed")
                    for sequence in batch:
                        if not sequence.done:
                            sequence.done = True
                            sequence.sink(Failed(f"generation failed: {error}"))
        with self._wakeup:
            leftover = list(self._pending)
            self._pending.clear()
        for sequence in leftover:
            sequence.sink(Failed("the server is shutting down"))

    def _admit(self, active: list[Sequence]) -> list[Sequence]:
        """Move waiting sequences into the batch while there is room; returns only the newcomers."""
        newcomers: list[Sequence] = []
        with self._wakeup:
            while self._pending and len(active) + len(newcomers) < self.max_batch_size:
                sequence = self._pending.popleft()
                if not sequence.cancelled:
                    newcomers.append(sequence)
        return newcomers

    def _run_classifications(self) -> None:
        while True:
            with self._wakeup:
                if not self._classifications:
                    return
                job = self._classifications.popleft()
            try:
                job.callback(self._classify(job.rows))
            except Exception as error:
                log.exception("classification failed")
                job.callback(Failed(f"classification failed: {error}"))

    @torch.inference_mode()
    def _classify(self, rows: list[list[int]]) -> list[list[float]]:
        """Class probabilities of token-id rows, right-padded into one batch."""
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.loaded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        device = self.loaded.device
        logits = self.loaded.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        probabilities: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return probabilities

    def adapters(self) -> dict[str, AdapterInfo]:
        """The adapters a request may name now."""
        with self._wakeup:
            return {name: info for name, (_, info) in self._adapters.items()}

    def load_adapter(self, name: str, path: str, run: int | None = None) -> Future[None]:
        """Load the peft adapter folder `path` and serve it as `name`; an adapter of that name is replaced
        (requests already queued or running finish on the old version). Done on the worker thread."""
        done: Future[None] = Future()

        def load() -> None:
            from peft import PeftModel

            self._versions += 1
            internal = f"adapter-{self._versions}"
            model = self.loaded.model
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=internal)
            else:
                model = PeftModel.from_pretrained(model, path, adapter_name=internal)
                self.loaded = replace(self.loaded, model=model)
            model.eval()
            with self._wakeup:
                previous = self._adapters.get(name)
                self._adapters[name] = (internal, AdapterInfo(path, run))
                if previous is not None:
                    self._retiring.add(previous[0])
            log.info("adapter %s loaded from %s (run %s)", name, path, run)

        self._control(load, done)
        return done

    def unload_adapter(self, name: str) -> Future[None]:
        """Stop serving `name` (KeyError through the future when it is not loaded); its weights are deleted
        once the requests using it have finished."""
        done: Future[None] = Future()

        def unload() -> None:
            with self._wakeup:
                internal, _ = self._adapters.pop(name)
                self._retiring.add(internal)
            log.info("adapter %s unloaded", name)

        self._control(unload, done)
        return done

    def _control(self, action: Callable[[], None], done: Future[None]) -> None:
        def run() -> None:
            try:
                action()
            except BaseException as error:  # reported to the caller, never kills the worker
                done.set_exception(error)
            else:
                done.set_result(None)

        with self._wakeup:
            if self._stopping:
                done.set_exception(RuntimeError("the server is shutting down"))
                return
            self._controls.append(run)
            self._wakeup.notify()

    def _run_controls(self) -> None:
        """Adapter loads and unloads, then deletion of retired versions no sequence uses any more."""
        while True:
            with self._wakeup:
                if not self._controls:
                    break
                control = self._controls.popleft()
            control()
        with self._wakeup:
            in_use = {s.adapter for s in (*self._batch, *self._pending) if not s.done}
            unused = self._retiring - in_use
            self._retiring -= unused
        for internal in sorted(unused):
            self.loaded.model.delete_adapter(internal)

    def _adapter_rows(self, batch: list[Sequence]) -> dict[str, Any]:
        """peft's per-row adapter choice, once the model carries adapters. A batch of one adapter takes peft's
        plain path (that adapter made active: no per-row split in every layer, measured ~2x faster on a small
        model); a mixed batch or the base passes one adapter name per row."""
        model = self.loaded.model
        if not hasattr(model, "peft_config"):
            return {}
        chosen = {s.adapter for s in batch}
        if len(chosen) == 1 and None not in chosen:
            (only,) = chosen
            if model.active_adapter != only:
                model.set_adapter(only)
            return {}
        return {"adapter_names": [s.adapter or "__base__" for s in batch]}

    def _prefill(self, batch: list[Sequence]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass over every sequence's tokens so far, left-padded.

        Returns the KV cache, the logits of each row's last position, the attention mask and each row's
        next position id.
        """
        rows = [sequence.prompt_ids + sequence.generated for sequence in batch]
        width = max(len(row) for row in rows)
        device = self.loaded.device
        input_ids = torch.full((len(rows), width), self.loaded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        self._batch = batch
        out = self.loaded.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **self._last_logits_only,
            **self._adapter_rows(batch),
        )
        return self._cache_of(out), out.logits[:, -1, :], mask, positions[:, -1] + 1

    def _scores(self, batch: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """The logits sampling sees: each row adjusted by its request's penalties, bias and constraint."""
        if not any(s.params.adjusts_logits() and not s.done for s in batch):
            return logits
        scores = logits.float().clone()
        for row, sequence in enumerate(batch):
            params = sequence.params
            if sequence.done or not params.adjusts_logits():
                continue
            allowed = None
            if sequence.constraint is not None:
                allowed = sequence.constraint.allowed(scores.shape[-1], self.loaded.eos_token_ids)
            scores[row] = adjust_logits(
                logits[row],
                sequence.generated,
                params.presence_penalty,
                params.frequency_penalty,
                params.logit_bias,
                allowed,
            )
        return scores

    def _cache_of(self, output: Any) -> Any:
        return getattr(output, self._cache_arg)

    @torch.inference_mode()
    def _generate(self, batch: list[Sequence]) -> None:
        cache, logits, mask, next_positions = self._prefill(batch)
        padded = has_padding(batch)
        while True:
            tokens = choose_next_tokens(
                self._scores(batch, logits),
                [s.params.temperature for s in batch],
                [s.params.top_p for s in batch],
                [s.generator for s in batch],
            )
            for row, (sequence, token) in enumerate(zip(batch, tokens, strict=True)):
                if not sequence.done:
                    wanted = sequence.params.logprobs
                    logprob = None
                    if wanted is not None:
                        chosen, top = token_logprobs(logits[row], token, wanted)
                        logprob = TokenLogprob(token, chosen, tuple(top))
                    advance(sequence, token, self.loaded.eos_token_ids, logprob)
            batch_alive = [s for s in batch if not s.done]
            if self._stopping:
                for sequence in batch_alive:
                    sequence.done = True
                    sequence.sink(Failed("the server is shutting down"))
                return
            newcomers = self._admit(batch_alive)
            if newcomers:
                self._run_controls()
                self._run_classifications()
                batch = batch_alive + newcomers
                cache, logits, mask, next_positions = self._prefill(batch)
                padded = has_padding(batch)
                continue
            if not batch_alive:
                self._batch = []
                return
            self._run_controls()
            self._run_classifications()
            if len(batch_alive) < len(batch) and hasattr(cache, "batch_select_indices"):
                # finished rows leave the batch: later steps compute only the live ones
                keep = [index for index, sequence in enumerate(batch) if not sequence.done]
                rows_kept = torch.tensor(keep, dtype=torch.long, device=mask.device)
                cache.batch_select_indices(rows_kept)
                mask, next_positions = mask[rows_kept], next_positions[rows_kept]
                batch, tokens = batch_alive, [tokens[index] for index in keep]
            pad = self.loaded.pad_token_id
            rows = [[pad if s.done else token] for s, token in zip(batch, tokens, strict=True)]
            step_ids = torch.tensor(rows, dtype=torch.long, device=self.loaded.device)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = self.loaded.model(
                input_ids=step_ids,
                attention_mask=mask if padded else None,
                position_ids=next_positions[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
                **self._adapter_rows(batch),
            )
            cache, logits, next_positions = self._cache_of(out), out.logits[:, -1, :], next_positions + 1
