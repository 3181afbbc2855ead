"""Model selection by validation loss (early stopping, resume) and the generation metrics: the pure rules."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from finetune_trainer.config import parse_config
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.data import formats
from finetune_trainer.data.formats.base import Conversation, Fields, generation_unsupported
from finetune_trainer.evaluation.generation import (
    cases_from,
    exact_match,
    json_valid,
    regex_match,
    rouge_l,
    scores,
    token_f1,
)
from finetune_trainer.evaluation.report import generation_section, render_html
from finetune_trainer.training.selection import PROGRESS_FIELDS, Evaluation, SelectionState, due, stale_folders

from tests.unit.trainer.test_config import CONTRACT_EXAMPLE


def run(losses: list[float], *, patience: int | None = 2, min_delta: float = 0.0, every: int = 10) -> SelectionState:
    state = SelectionState()
    for index, loss in enumerate(losses, start=1):
        state = state.record(index * every, loss, min_delta, patience)
    return state


def test_due_every_interval_and_at_the_last_step() -> None:
    assert [s for s in range(0, 26) if due(s, 10, 25)] == [10, 20, 25]
    assert not due(0, 10, 25)
    assert [s for s in range(0, 31) if due(s, 10, 0)] == [10, 20, 30]  # max_steps unknown: interval only


def test_best_is_the_lowest_loss_and_early_stopping_needs_patience_evaluations_in_a_row() -> None:
    state = run([2.0, 1.5, 1.6, 1.4, 1.7, 1.8])
    assert state.best == Evaluation(40, 1.4)
    assert state.stopped_at == 60 and state.early_stopped and state.since_best == 2
    assert "step 40" in state.describe(60) and "early stopping fired at step 60" in state.describe(60)
    # one worse evaluation, then an improvement: the count starts again
    assert run([2.0, 2.1, 1.9, 2.0]).stopped_at is None


def test_min_delta_small_gains_are_no_improvement() -> None:
    state = run([1.0, 0.995, 0.99], min_delta=0.02)
    assert state.best == Evaluation(10, 1.0) and state.stopped_at == 30
    assert run([1.0, 0.97], min_delta=0.02).best == Evaluation(20, 0.97)


def test_without_patience_it_never_stops_but_still_selects() -> None:
    state = run([1.0, 2.0, 3.0, 4.0], patience=None)
    assert state.best == Evaluation(10, 1.0) and not state.early_stopped
    assert "not the last step 40" in state.describe(40)


def test_nan_is_never_the_best() -> None:
    state = run([float("nan"), 3.0, float("inf")], patience=5)
    assert state.best == Evaluation(20, 3.0)
    assert run([float("nan")], patience=5).best is None
    assert "no validation loss was finite" in run([float("nan")], patience=5).describe(10)


def test_resume_forgets_later_evaluations_but_keeps_the_best() -> None:
    state = run([2.0, 1.0, 1.5, 1.6])  # stopped at 40, best 20
    assert state.stopped_at == 40
    resumed = state.resumed_at(30)
    assert [e.step for e in resumed.history] == [10, 20, 30] and resumed.best == Evaluation(20, 1.0)
    assert not resumed.early_stopped and resumed.since_best == 1
    assert state.resumed_at(40) == state  # resumed at the stop step: stopped, nothing forgotten
    # a best from after the resumed step (its weights are complete in storage) stays the best
    ahead = run([2.0, 1.8, 1.0]).resumed_at(20)
    assert ahead.best == Evaluation(30, 1.0) and ahead.since_best == 0
    again = ahead.record(30, 1.1, 0.0, 2)  # step 30 trained again, slightly worse: the stored best stays
    assert again.best == Evaluation(30, 1.0) and again.latest == Evaluation(30, 1.1)


def test_state_round_trips_through_json_and_reports_progress() -> None:
    state = run([2.0, 1.0, 1.5, 1.6])
    from dataclasses import replace

    state = replace(state, best_folder="step-20-abcd")
    assert SelectionState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.progress() == {
        "validationLoss": 1.6,
        "validationStep": 40,
        "bestValidationLoss": 1.0,
        "bestValidationStep": 20,
        "earlyStopped": True,
    }
    assert set(PROGRESS_FIELDS) == set(state.progress())
    assert all(value is None for value in SelectionState().progress().values())  # nulls clear stale values
    facts = state.facts(40)
    assert facts["bestStep"] == 20 and facts["earlyStopped"] is True and facts["validationHistory"]["best"]


def test_stale_best_folders() -> None:
    assert stale_folders({"step-2-a", "step-4-b", "step-6-c"}, "step-4-b") == ["step-2-a", "step-6-c"]
    assert stale_folders(set(), None) == []


def config_with(evaluation: dict[str, Any], **dataset: Any) -> dict[str, Any]:
    raw = copy.deepcopy(CONTRACT_EXAMPLE)
    raw["evaluation"] = evaluation
    raw["dataset"].update(dataset)
    return raw


def test_config_accepts_the_evaluation_fields() -> None:
    config = parse_config(
        config_with(
            {
                "intervalSteps": 50,
                "earlyStopping": {"patience": 2, "minDelta": 0.01},
                "generation": {"maxSamples": 20, "maxNewTokens": 64, "regex": "[A-Z]+", "jsonValid": True},
            }
        )
    )
    assert config.evaluation.early_stopping is not None and config.evaluation.early_stopping.patience == 2
    assert config.evaluation.generation is not None and config.evaluation.generation.regex == "[A-Z]+"
    assert parse_config(config_with({"earlyStopping": {}, "intervalSteps": 5})).evaluation.early_stopping


@pytest.mark.parametrize(
    ("evaluation", "dataset", "fragment"),
    [
        ({"earlyStopping": {"patience": 2}}, {}, "earlyStopping needs intervalSteps"),
        ({"intervalSteps": 0}, {}, "intervalSteps"),
        ({"generation": {"regex": "(unclosed"}}, {}, "not a valid regular expression"),
        ({"generation": {}}, {"schema": "text"}, "schema 'text' has no prompts and no reference answers"),
        ({"intervalSteps": 5}, {"split": {"validation": 0.0, "test": 0.1, "seed": 1}}, "no validation split"),
    ],
)
def test_config_refuses_evaluation_that_cannot_work(
    evaluation: dict[str, Any], dataset: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigInvalid, match="evaluation") as caught:
        parse_config(config_with(evaluation, **dataset))
    assert fragment in caught.value.message


def test_which_formats_have_references() -> None:
    usable = sorted(name for name, fmt in formats.FORMATS.items() if generation_unsupported(fmt) is None)
    assert usable == ["alpaca", "chat", "prompt-completion", "sharegpt"]


def normalised(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return formats.FORMATS[name].normalize(Fields(record, "test line 1", {}))


def test_cases_take_the_last_learned_assistant_turn_as_reference() -> None:
    chat = normalised(
        "chat",
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
    )
    tool_call = normalised(
        "chat",
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}],
                },
            ]
        },
    )
    found = cases_from([tool_call, chat, chat], formats.FORMATS["chat"], limit=1)
    assert found.skipped == 1 and len(found.cases) == 1
    case = found.cases[0]
    assert case.reference == "4" and [m["role"] for m in case.messages or []] == ["system", "user", "assistant", "user"]
    assert case.shown().splitlines()[-1] == "user: 2+2?"
    assert Conversation.from_example(chat).turns[-1].content == "4"

    alpaca = normalised("alpaca", {"instruction": "Sum", "input": "1 2", "output": "3"})
    (case,) = cases_from([alpaca], formats.FORMATS["alpaca"], 5).cases
    assert case.reference == "3" and case.messages == [{"role": "user", "content": "Sum\n\n1 2"}]

    pc = normalised("prompt-completion", {"prompt": "Q: 1+1\nA:", "completion": " 2"})
    (case,) = cases_from([pc], formats.FORMATS["prompt-completion"], 5).cases
    assert case.messages is None and case.text == "Q: 1+1\nA:" and case.reference == " 2"


def test_exact_match_and_token_f1() -> None:
    assert exact_match(" Paris\n", "Paris") == 1.0 and exact_match("paris", "Paris") == 0.0
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)  # counted with multiplicity
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("Größe 3", "größe 3") == 1.0  # words of any script, case folded


def test_rouge_l_comes_from_rouge_score_over_words_of_any_script() -> None:
    assert rouge_l(["the cat sat on the mat"], ["the cat lay on the mat"]) == [pytest.approx(5 / 6)]
    assert rouge_l(["東京 です"], ["東京 です"]) == [1.0]  # rouge-score's own tokenizer would see no tokens
    assert rouge_l(["x"], ["y"]) == [0.0]


def test_regex_and_json_checks() -> None:
    assert regex_match(" ORDER-123 \n", r"ORDER-\d+") == 1.0
    assert regex_match("ORDER-123 thanks", r"ORDER-\d+") == 0.0  # the whole answer must match
    assert json_valid(' {"a": 1} ') == 1.0 and json_valid("{'a': 1}") == 0.0 and json_valid("") == 0.0


def test_scores_average_over_answers_and_add_the_optional_checks_only_when_asked() -> None:
    result = scores(['{"x": 1}', "no"], ['{"x": 1}', "yes"], regex=r"\{.*\}", check_json=True)
    assert result["exact_match"] == 0.5 and result["regex_match"] == 0.5 and result["json_valid"] == 0.5
    assert result["token_f1"] == 0.5 and result["rouge_l"] == 0.5
    assert set(scores(["a"], ["a"])) == {"exact_match", "token_f1", "rouge_l"}
    assert scores([], []) == {}


def test_report_table_escapes_every_text() -> None:
    rows = [{"prompt": "user: <script>x</script>", "reference": "a & b", "answer": "<b>", "baseAnswer": '"q"'}]
    section = generation_section(rows)
    assert "<script>" not in section and "&lt;script&gt;" in section and "a &amp; b" in section
    assert "base answer" in section and "&quot;q&quot;" in section
    page = render_html("t", {"test": {"exact_match": 0.5}}, {}, {"generation": rows, "steps": 3}, b"")
    assert "Generated answers" in page and "<td>generation</td>" not in page
    assert generation_section([]) == ""


def test_progress_carries_the_selection_fields_and_a_change_goes_out_at_once() -> None:
    from finetune_trainer.training.progress import Reporter, Throttle

    sent: list[dict[str, Any]] = []
    now = [100.0]
    reporter = Reporter(1, sent.append, Throttle(min_interval=5.0, max_interval=30.0), clock=lambda: now[0])
    reporter.extra = dict.fromkeys(PROGRESS_FIELDS)
    reporter.report("loading", force=True)
    assert all(sent[-1]["status"]["progress"][name] is None for name in PROGRESS_FIELDS)  # null deletes stale
    reporter.extra = {}
    reporter.report("training", step=1)
    now[0] += 1
    reporter.report("training", step=2)  # throttled: nothing new but the step
    assert len(sent) == 2
    reporter.extra.update(run([2.0, 1.5]).progress())
    now[0] += 1
    reporter.report("training", step=3)  # a new validation loss is sent at once
    assert len(sent) == 3 and sent[-1]["status"]["progress"]["bestValidationLoss"] == 1.5
    assert sent[-1]["status"]["progress"]["validationStep"] == 20
