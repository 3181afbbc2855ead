"""Task metrics for generative models (`evaluation.generation`): answers to test prompts scored against references.

Why: test loss says how surprised the model is by the reference answer, not whether the answer it gives is
right; a chat model is judged, and gated, on what it says. So the fine-tuned model (and the base model, with
`compareBaseModel`) answers up to `maxSamples` test prompts, greedily, and each answer is scored against the
reference: exact match, token F1 and ROUGE-L (the `rouge-score` package), plus, when asked, the fraction of
answers a regular expression matches in full and the fraction that parse as JSON. The scores join the test
metrics (`test_exact_match`, `test_token_f1`, `test_rouge_l`, `test_regex_match`, `test_json_valid`), so the
gate can use them.

Where prompts and references come from (by the format's kind, finetune_trainer.data.formats):
- conversations (chat, alpaca, sharegpt): the reference is the last learned assistant turn, the prompt is every
  turn before it, rendered with the model's chat template and the generation prompt, as the server renders a
  chat request; a record whose last learned turn is a tool call (no text) is skipped and counted;
- prompt-completion: the prompt as it was trained (raw text, the tokenizer's special tokens), the completion
  is the reference;
- text has no prompt and no reference (every token is learned): asking for generation is a config error,
  found by `validate` before any GPU is taken; classification models have accuracy and F1 instead.

The examples taken are the first `maxSamples` of the test split in its recorded order (`run-N/split/test.jsonl`),
so the base and fine-tuned models answer the same prompts and a rerun picks the same ones. Scoring is pure and
unit-tested; only `generate` touches torch.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from finetune_trainer.data.chat_template import render_messages
from finetune_trainer.data.formats.base import Conversation, Format

log = logging.getLogger(__name__)

BATCH = 8
"""Prompts generated together (left-padded); small, so a long answer holds few others back."""


@dataclass(frozen=True)
class Case:
    """One test prompt and its reference answer."""

    messages: list[dict[str, Any]] | None
    """The conversation before the reference turn (rendered with the chat template); None: `text` is the prompt."""
    text: str
    """The raw prompt of a completion format ("" for a conversation)."""
    reference: str
    tools: list[dict[str, Any]] | None = None

    def shown(self) -> str:
        """The prompt as the report shows it: `role: content` lines, or the raw prompt."""
        if self.messages is None:
            return self.text
        return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in self.messages)


@dataclass(frozen=True)
class Cases:
    cases: list[Case]
    skipped: int = 0
    """Test records without a text reference (the last learned turn is a tool call)."""


def cases_from(examples: Sequence[dict[str, Any]], fmt: Format, limit: int) -> Cases:
    """The first `limit` test examples that have a prompt and a reference (the module says which)."""
    found: list[Case] = []
    skipped = 0
    for example in examples:
        if len(found) >= limit:
            break
        if fmt.kind == "completion":
            found.append(Case(None, str(example["prompt"]), str(example["completion"])))
            continue
        conversation = Conversation.from_example(example)
        learned = [i for i, turn in enumerate(conversation.turns) if turn.learn]
        last = conversation.turns[learned[-1]]
        if last.tool_calls or not last.content.strip():
            skipped += 1
            continue
        before = [turn.template_message() for turn in conversation.turns[: learned[-1]]]
        found.append(Case(before, "", last.content, conversation.tools))
    return Cases(found, skipped)


_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits of any script): what token F1 and ROUGE-L compare."""
    return _WORD.findall(text.lower())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer is the reference, ignoring leading and trailing whitespace only."""
    return 1.0 if answer.strip() == reference.strip() else 0.0


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1 over `words` (counted with multiplicity); two empty texts agree."""
    predicted, expected = words(answer), words(reference)
    if not predicted or not expected:
        return 1.0 if predicted == expected else 0.0
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class _WordTokenizer:
    """rouge-score's tokenizer interface over `words` (its default keeps a-z0-9 only, losing other scripts)."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each answer against its reference (rouge-score, over `words`)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references, strict=True)]


REGEX_SECONDS = 1.0
"""The most one answer may take to match `evaluation.generation.regex`. A pattern that backtracks catastrophically
(`(a|aa)+b` on a long answer) would otherwise hold the evaluation, and the run's GPUs, for hours; the `regex`
engine stops the match at this limit, the answer counts as not matching and a warning names the pattern."""


def regex_match(answer: str, pattern: str) -> float:
    """1.0 when `pattern` matches the whole answer (surrounding whitespace aside); 0.0 past REGEX_SECONDS."""
    try:
        matched = regex.fullmatch(pattern, answer.strip(), flags=regex.DOTALL, timeout=REGEX_SECONDS)
    except TimeoutError:
        log.warning(
            "evaluation.generation.regex %r took over %.0f s on one answer (%d characters): counted as no match",
            pattern,
            REGEX_SECONDS,
            len(answer),
        )
        return 0.0
    return 1.0 if matched else 0.0


def json_valid(answer: str) -> float:
    """1.0 when the answer (surrounding whitespace aside) is one JSON value."""
    try:
        json.loads(answer.strip())
    except ValueError:
        return 0.0
    return 1.0


def scores(
    answers: Sequence[str], references: Sequence[str], regex: str | None = None, check_json: bool = False
) -> dict[str, float]:
    """The metrics over every answer: means in [0, 1], rounded like the loss metrics. Empty input: nothing.

    `regex_match` only with a `regex`, `json_valid` only with `check_json` (evaluation.generation's jsonValid).
    """
    count = len(answers)
    if count == 0:
        return {}

    def mean(values: Sequence[float]) -> float:
        return round(sum(values) / count, 6)

    out = {
        "exact_match": mean([exact_match(a, r) for a, r in zip(answers, references, strict=True)]),
        "token_f1": mean([token_f1(a, r) for a, r in zip(answers, references, strict=True)]),
        "rouge_l": mean(rouge_l(answers, references)),
    }
    if regex is not None:
        out["regex_match"] = mean([regex_match(a, regex) for a in answers])
    if check_json:
        out["json_valid"] = mean([json_valid(a) for a in answers])
    return out


@dataclass
class Generation:
    """The answers of one model to the cases, and their scores."""

    answers: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"answers": self.answers, "scores": self.scores}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generation:
        return cls([str(a) for a in data.get("answers") or []], dict(data.get("scores") or {}))


def prompt_ids(tokenizer: Any, case: Case) -> list[int]:
    """Token ids of the prompt, rendered exactly as training rendered the example's prefix."""
    if case.messages is None:
        ids = tokenizer(case.text, add_special_tokens=True)["input_ids"]
    else:
        text = render_messages(tokenizer, case.messages, generation_prompt=True, tools=case.tools)  # the server's
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:  # an empty prompt: start from the beginning-of-sequence token, as the server does
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return [int(i) for i in ids]


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = configured if isinstance(configured, list) else [configured]
    ids = [int(i) for i in listed if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def generate(
    model: Any, tokenizer: Any, cases: Sequence[Case], max_new_tokens: int, precision: str, lockstep: bool = False
) -> list[str]:
    """Greedy answers of `model` to every case (left-padded batches, KV cache on), special tokens removed.

    `lockstep` (a sharded model: every forward is a collective): every rank calls this with the same cases, and
    each batch runs forwards until every rank is done (`synced_gpus`), so no rank waits in a collective alone.
    """
    import torch
    from transformers import GenerationConfig

    from finetune_trainer.evaluation.autocast import autocast

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(model, tokenizer)
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=stop, pad_token_id=pad
    )
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(cases), BATCH):
                prompts = [prompt_ids(tokenizer, case) for case in cases[start : start + BATCH]]
                width = max(len(ids) for ids in prompts)
                input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=device)
                mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
                with autocast(device, precision):
                    output = model.generate(
                        input_ids=input_ids, attention_mask=mask, generation_config=config, synced_gpus=lockstep
                    )
                for row in output[:, width:].tolist():
                    answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        if was_training:
            model.train()
    return answers


def run(
    model: Any,
    tokenizer: Any,
    cases: Cases,
    *,
    max_new_tokens: int,
    regex: str | None,
    check_json: bool,
    precision: str,
    lockstep: bool = False,
) -> Generation:
    """Generate and score; logs how many prompts were answered and how many records had no reference."""
    if cases.skipped:
        log.info("generation: %d test record(s) end in a tool call, not text: not scored", cases.skipped)
    answers = generate(model, tokenizer, cases.cases, max_new_tokens, precision, lockstep)
    result = Generation(answers, scores(answers, [c.reference for c in cases.cases], regex, check_json))
    log.info("generation: %d answer(s) scored: %s", len(answers), result.scores)
    return result
