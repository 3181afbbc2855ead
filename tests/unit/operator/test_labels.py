"""Child names stay valid and distinct for any legal FineTuneJob name."""

from __future__ import annotations

import re

import pytest
from finetune_operator.api.labels import BASE_MAX, Names, base_name, label_value

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_short_names_are_kept() -> None:
    assert base_name("support-bot") == "support-bot"
    assert Names.of("support-bot").job(2) == "support-bot-r2"


@pytest.mark.parametrize("name", ["a" * 253, "1st-job", "team.a.support-bot", "x" * 41, "a-" * 60 + "z"])
def test_any_legal_name_gives_a_valid_base(name: str) -> None:
    base = base_name(name)
    assert DNS1035.match(base) and len(base) <= BASE_MAX


def test_long_names_sharing_a_prefix_do_not_collide() -> None:
    assert base_name("a" * 100 + "1") != base_name("a" * 100 + "2")


def test_label_values_are_valid() -> None:
    assert label_value("support-bot") == "support-bot"
    long = label_value("a." * 100 + "b")
    assert LABEL.match(long) and len(long) <= 63
