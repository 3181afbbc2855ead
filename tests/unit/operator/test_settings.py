"""Each operator setting is declared once (finetune_operator.core.settings): the command line and the
environment come from that declaration, and the chart and the settings table in the chart's README are checked
against it here.

The chart is rendered with `helm template` (no cluster); helm is found as tests/helm/chart.py finds it (PATH,
then hack/install-tools.sh's folder), and a missing helm fails these tests rather than skipping them.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.core.settings import (
    AllowedToleration,
    Declared,
    Settings,
    _is_list,
    declared,
    env_text,
    parse_args,
)
from finetune_operator.core.settings_table import settings_table

from tests.helm.chart import CHART, helm

SETTINGS = declared()
BY_ENV = {item.option.env: item for item in SETTINGS}
README = CHART / "README.md"
TABLE_START = "<!-- settings table: generated from finetune_operator.core.settings; do not edit by hand -->\n"
TABLE_END = "<!-- end of settings table -->\n"


def _sample(item: Declared) -> Any:
    """A value other than the default that the setting accepts."""
    if item.option.choices:
        return next(choice for choice in item.option.choices if choice != item.default)
    if item.type is bool:
        return not item.default
    if item.type in (int, float):
        return item.type(item.default + 7)
    if item.option.parse:  # the one structured setting: the toleration allow-list
        return (AllowedToleration(key="nvidia.com/gpu", operator="Exists"), AllowedToleration(key="pool"))
    if _is_list(item):
        return ("A100=30Gi", "L4=20Gi") if item.option.check else ("team-a", "team-b")
    return f"{item.default}x"


def test_the_declaration_names_every_flag_and_variable_once() -> None:
    envs = [item.option.env for item in SETTINGS]
    flags = [flag for item in SETTINGS for flag in (*item.option.flags, *item.option.reset)]
    assert len(set(envs)) == len(envs) and all(re.fullmatch(r"FTO_[A-Z_]+", env) for env in envs), envs
    assert len(set(flags)) == len(flags), flags
    assert all(item.option.help or item.option.choices for item in SETTINGS)  # the table says what each means
    assert Settings() == parse_args([], env={})  # the declared defaults are the ones the operator runs with


@pytest.mark.parametrize("item", SETTINGS, ids=[item.name for item in SETTINGS])
def test_each_setting_from_its_variable_and_its_flag(item: Declared) -> None:
    """Driven by the declaration: the variable sets the field, the flag sets it and wins over the variable."""
    value = _sample(item)
    option = item.option
    assert getattr(parse_args([], env={option.env: env_text(item, value)}), item.name) == value
    if item.type is bool:
        argv = [option.flags[0] if value else "--no-" + option.flags[0].removeprefix("--")]
    elif _is_list(item) and not option.parse:
        argv = [arg for entry in value for arg in (option.flags[0], entry)]
    else:
        argv = [option.flags[0], env_text(item, value)]
    default_env = {} if item.default is None else {option.env: env_text(item, item.default)}  # None: unset
    assert getattr(parse_args(argv, env=default_env), item.name) == value


def test_list_settings_reset_and_check() -> None:
    assert parse_args(["-A", "-n", "a"], env={"FTO_NAMESPACES": "b"}).namespaces == ()
    assert parse_args(["-n", "a,b", "--namespace", "c"], env={"FTO_NAMESPACES": "d"}).namespaces == ("a", "b", "c")
    with pytest.raises(SystemExit, match="--gpu-memory / FTO_GPU_MEMORY: H100:lots: each must be NAME=QUANTITY"):
        parse_args(["--gpu-memory", "H100:lots"], env={})


def test_help_has_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"], env={})
    text = " ".join(capsys.readouterr().out.split())
    for item in SETTINGS:
        assert all(flag in text for flag in (*item.option.flags, *item.option.reset)), item.name
        assert f"Env {item.option.env}" in text, item.name


# --- the chart ----------------------------------------------------------------------------------------------


def _operator_env(values: dict[str, Any] | None = None) -> dict[str, str]:
    """The operator container's env as `helm template` renders it, with values given as JSON (types kept)."""
    return dict(_rendered_env(json.dumps(values or {}, sort_keys=True)))


@functools.cache
def _rendered_env(values_json: str) -> tuple[tuple[str, str], ...]:
    values = json.loads(values_json)
    sets = [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
    out = helm("template", "r", str(CHART), "--namespace", "ops", *sets).stdout
    # the operator's Deployment (with api.enabled the chart renders the API's beside it)
    (deployment,) = [
        d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "Deployment" and d["metadata"]["labels"].get("app.kubernetes.io/component") != "api"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return tuple((e["name"], e.get("value")) for e in container["env"] if e["name"].startswith("FTO_"))


def _lookup(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _schema_node(key: str) -> dict[str, Any]:
    """The schema of a values key; a key the schema does not name fails with KeyError."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    node = schema
    for part in key.split("."):
        node = node["properties"][part]
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return node


def _changed(key: str, value: Any) -> Any:
    """A value of the key's schema other than its values.yaml default."""
    node = _schema_node(key)
    if "enum" in node:
        return next(choice for choice in node["enum"] if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, dict):
        return {"H100-80G": "76Gi"}
    if isinstance(value, list):
        return [{"key": "pool"}] if node.get("items", {}).get("type") == "object" else ["team-a"]
    return f"{value}x"


@pytest.mark.parametrize("values", [{}, {"leaderElection": {"enabled": False}}], ids=["default", "no-leader"])
def test_every_variable_the_chart_sets_is_a_declared_setting(values: dict[str, Any]) -> None:
    env = _operator_env(values)
    assert not set(env) - set(BY_ENV), "the chart sets FTO_* variables no setting declares"
    if not values:  # the default chart (leader election on) sets every setting
        assert set(env) == set(BY_ENV), f"no chart value reaches {sorted(set(BY_ENV) - set(env))}"


CHART_KEYS = [(item.option.env, key) for item in SETTINGS for key in item.option.chart]


@pytest.mark.parametrize(("env", "key"), CHART_KEYS, ids=[f"{env}<-{key}" for env, key in CHART_KEYS])
def test_each_declared_chart_value_exists_and_feeds_its_variable(env: str, key: str) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    value = _lookup(defaults, key)  # KeyError: values.yaml lacks the key
    _schema_node(key)  # KeyError: values.schema.json lacks it
    before, after = _operator_env()[env], _operator_env({key: _changed(key, value), **REQUIRED_WITH.get(key, {})})[env]
    assert before != after, f"{key} does not reach {env}"


REQUIRED_WITH = {"api.enabled": {"api.files.bucket": "files"}}
"""Values the chart requires beside a changed one (api.enabled refuses to render without its bucket)."""


def _template_env_values() -> dict[str, str]:
    """Each FTO_* entry of the Deployment template and the template expression of its value."""
    text = (CHART / "templates" / "deployment.yaml").read_text()
    return dict(re.findall(r"- name: (FTO_\w+)\n\s+value: (\{\{.*?\}\})", text))


def _values_read(expression: str) -> set[str]:
    """The .Values keys an expression reads, through the chart's own named templates."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name in re.findall(r'include "([^"]+)"', expression):
        body = re.search(
            r'\{\{-? define "' + re.escape(name) + r'" -?\}\}(.*?)\{\{-? end -?\}\}\n(?!\{\{-? end)', helpers, re.S
        )
        assert body, name
        expression += body.group(1)
    return set(re.findall(r"\.Values\.([\w.]+)", expression))


def test_the_chart_feeds_no_undeclared_value_into_a_setting() -> None:
    """The other direction: a chart value the template reads into an FTO_* variable is declared for it, so the
    table's chart column is complete (the rendering test above proves each declared one is really read)."""
    expressions = _template_env_values()
    assert set(expressions) == set(BY_ENV), sorted(set(expressions) ^ set(BY_ENV))
    for env, expression in expressions.items():
        assert _values_read(expression) == set(BY_ENV[env].option.chart), (env, expression)


# --- the documentation ----------------------------------------------------------------------------------------


def _readme_table(path: Path) -> str:
    text = path.read_text()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, f"{path}: the settings table's markers"
    return text.split(TABLE_START)[1].split(TABLE_END)[0]


def test_the_readme_table_is_the_declaration() -> None:
    """UPDATE_GOLDEN=1 rewrites the table between the markers, as it does the builders' golden files."""
    table = settings_table()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        before, rest = README.read_text().split(TABLE_START)
        README.write_text(before + TABLE_START + table + TABLE_END + rest.split(TABLE_END, 1)[1])
    assert _readme_table(README) == table, f"{README} is out of date (UPDATE_GOLDEN=1 rewrites it):\n{table}"
    rows = table.splitlines()[2:]
    assert [re.findall(r"`(FTO_\w+)`", row)[0] for row in rows] == list(BY_ENV)
    for row, item in zip(rows, SETTINGS, strict=True):
        default = env_text(item, item.default)
        shown = "(unset)" if item.default is None else f"`{default}`" if default else "(empty)"
        assert f"| {shown} |" in row, (row, default)


def test_a_value_outside_a_settings_choices_is_refused_from_the_variable_as_from_the_flag() -> None:
    for env, value in (
        ("FTO_NODE_PRESSURE_EVICTIONS", "0"),
        ("FTO_NODE_PRESSURE_EVICTIONS", "21"),
        ("FTO_LOG_FORMAT", "xml"),
    ):
        with pytest.raises(SystemExit, match=f"{env}={value}: not one of"):
            parse_args([], env={env: value})
    with pytest.raises(SystemExit):
        parse_args(["--node-pressure-evictions", "0"], env={})
    assert parse_args([], env={"FTO_NODE_PRESSURE_EVICTIONS": "20"}).node_pressure_evictions == 20
