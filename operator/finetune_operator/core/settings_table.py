"""The operator's settings as a Markdown table, generated from their one declaration (core/settings.py).

Why generated: helm/finetune-operator/README.md carries this table, and tests/unit/operator/test_settings.py fails
when the two drift (UPDATE_GOLDEN=1 rewrites it); apart from the settings so the operator never loads it.
"""

from __future__ import annotations

from finetune_operator.core.settings import Declared, declared, env_text


def _table_row(item: Declared) -> str:
    option = item.option
    flags = " / ".join(f"`{flag}`" for flag in option.flags if flag.startswith("--"))
    if item.type is bool:
        flags += f" / `--no-{option.flags[0].removeprefix('--')}`"
    default = env_text(item, item.default)
    chart = ", ".join(f"`{key}`" for key in option.chart) or "-"
    meaning = [option.help.replace("|", "\\|")]
    if option.choices:
        meaning.append(f"One of {', '.join(f'`{choice}`' for choice in option.choices)}.")
    if option.reset:
        meaning.append(
            f"{' / '.join(f'`{flag}`' for flag in option.reset if flag.startswith('--'))}: {option.reset_help}."
        )
    shown = "(unset)" if item.default is None else f"`{default}`" if default else "(empty)"
    return f"| {flags} | `{option.env}` | {shown} | {chart} | {' '.join(part for part in meaning if part)} |"


def settings_table() -> str:
    """The settings as a Markdown table (helm/finetune-operator/README.md carries it; a unit test compares)."""
    header = ["| flag | variable | default | chart value | meaning |", "|---|---|---|---|---|"]
    return "\n".join([*header, *(_table_row(item) for item in declared())]) + "\n"
