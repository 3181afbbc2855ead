"""Constrained decoding: `response_format` (json_object, json_schema) and forced tool calls, token by token.

Why xgrammar: it is a maintained library (vLLM's default structured-output backend, so our server and the vLLM
engine enforce JSON schemas with the same grammar semantics), it runs on CPU, and its `GrammarMatcher` fits a
hand-written decode loop: after each accepted token it gives the exact set of tokens that keep the output valid,
as a bitmask over the vocabulary. lm-format-enforcer (also installable here, pure Python) was the alternative;
it walks a character trie per token in Python, which is slower on a 49k vocabulary, and it is vLLM's secondary
backend. Grammars are compiled once per (tokenizer, schema) by xgrammar's own cache, off the event loop.

A `Constraint` is one sequence's matcher. The engine asks `allowed()` before each sampling step (the logits of
every other token become -inf, `decoding.adjust_logits`) and `accept()`s the chosen token. Once the grammar is
complete only the end-of-sequence tokens are allowed, so the output stops exactly there.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Collection
from typing import Any

import torch

from finetune_trainer.serving.server.protocol import bad_request

_COMPILERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def _compiler(tokenizer: Any, vocab_size: int, eos_token_ids: Collection[int]) -> Any:
    """xgrammar's compiler for a tokenizer (built once: reading a 49k vocabulary takes seconds)."""
    import xgrammar

    with _LOCK:
        compiler = _COMPILERS.get(tokenizer)
        if compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_token_ids)
            )
            compiler = xgrammar.GrammarCompiler(info, max_threads=1)
            _COMPILERS[tokenizer] = compiler
        return compiler


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, compiled: Any) -> None:
        import xgrammar

        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def allowed(self, width: int, eos_token_ids: Collection[int]) -> torch.Tensor:
        """A bool mask over `width` logits: the tokens that keep the output valid (only end-of-sequence once the
        grammar is complete)."""
        mask = torch.zeros(width, dtype=torch.bool)
        if self._matcher.is_terminated():
            mask[[t for t in eos_token_ids if t < width]] = True
            return mask
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bits = ((self._bitmask[0].unsqueeze(-1) >> self._shifts) & 1).bool().flatten()
        size = min(width, bits.numel())
        mask[:size] = bits[:size]
        return mask

    def accept(self, token: int) -> None:
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token)


def _compile(
    tokenizer: Any, vocab_size: int, eos_token_ids: Collection[int], build: Callable[[Any], Any], param: str
) -> Callable[[], Constraint]:
    try:
        compiled = build(_compiler(tokenizer, vocab_size, eos_token_ids))
    except (RuntimeError, ValueError, TypeError) as error:  # xgrammar's errors on a schema it cannot compile
        raise bad_request(f"cannot enforce this {param}: {error}", param) from None
    return lambda: Constraint(compiled)


def json_object(tokenizer: Any, vocab_size: int, eos_token_ids: Collection[int]) -> Callable[[], Constraint]:
    """`response_format: {"type": "json_object"}`: any JSON object."""

    def build(compiler: Any) -> Any:
        return compiler.compile_json_schema({"type": "object"}, any_whitespace=False, strict_mode=False)

    return _compile(tokenizer, vocab_size, eos_token_ids, build, "response_format")


def json_schema(
    tokenizer: Any, vocab_size: int, eos_token_ids: Collection[int], schema: dict[str, Any], strict: bool
) -> Callable[[], Constraint]:
    """`response_format: {"type": "json_schema", ...}`: JSON valid against `schema` (with `strict`, no property
    beyond those the schema names, as OpenAI's strict mode)."""

    def build(compiler: Any) -> Any:
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=strict)

    return _compile(tokenizer, vocab_size, eos_token_ids, build, "response_format.json_schema")


def tool_call(
    tokenizer: Any, vocab_size: int, eos_token_ids: Collection[int], functions: list[dict[str, Any]]
) -> Callable[[], Constraint]:
    """`tool_choice` required or named: exactly one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
    (the chat template's convention, `tools.parse_tool_calls`), the name one of `functions` and the arguments
    valid against that function's `parameters`."""
    import xgrammar

    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function["name"]},
                "arguments": function.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for function in functions
    ]
    schema = choices[0] if len(choices) == 1 else {"anyOf": choices}

    def build(compiler: Any) -> Any:
        grammar = xgrammar.Grammar.concat(
            xgrammar.Grammar.from_ebnf(f'root ::= "{TOOL_CALL_OPEN}"'),
            xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True),
            xgrammar.Grammar.from_ebnf(f'root ::= "{TOOL_CALL_CLOSE}"'),
        )
        return compiler.compile_grammar(grammar)

    return _compile(tokenizer, vocab_size, eos_token_ids, build, "tools")
