"""The run's human-readable report: a loss-curve picture and the metrics table, in one HTML file.

Why self-contained: the report is opened straight from object storage (a presigned link, a console), so
the PNG is embedded as a data URI and there are no external assets. `loss_history` and `render_html`
are pure; only `loss_curve_png` touches matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any


def loss_history(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Training and evaluation loss points (step, loss) from the Trainer's `state.log_history`."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    evaluation = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    return {"train": train, "validation": evaluation}


def loss_curve_png(history: Mapping[str, Sequence[tuple[int, float]]], title: str) -> bytes:
    """A small PNG of loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in history.items():
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if any(history.values()):
        axes.legend()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _table(rows: Sequence[tuple[str, str, str]]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>" for a, b, c in rows
    )
    return f"<table><tr><th>split</th><th>metric</th><th>value</th></tr>{cells}</table>"


SECTIONS = ("generation", "validationHistory")
"""Facts shown as sections of their own (or only in metrics.json), not as rows of the facts table."""


def generation_section(rows: Sequence[Mapping[str, str]]) -> str:
    """evaluation.generation: each test prompt, its reference and the answers, every text escaped."""
    if not rows:
        return ""
    base = any("baseAnswer" in row for row in rows)
    columns = ["prompt", "reference", "answer"] + (["baseAnswer"] if base else [])
    heads = {"prompt": "prompt", "reference": "reference", "answer": "fine-tuned answer", "baseAnswer": "base answer"}
    head = "".join(f"<th>{heads[c]}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td><pre>{html.escape(str(row.get(c, '')))}</pre></td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<h2>Generated answers (test prompts)</h2><table class="generation"><tr>{head}</tr>{body}</table>'


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_html(
    title: str,
    metrics: Mapping[str, Mapping[str, Any]],
    base_metrics: Mapping[str, Mapping[str, Any]],
    facts: Mapping[str, Any],
    png: bytes,
) -> str:
    """The report page: facts about the run, the metrics (and the base model's, when compared), the curve."""
    rows = [(split, name, _format(value)) for split, values in metrics.items() for name, value in values.items()]
    base_rows = [
        (split, name, _format(value)) for split, values in base_metrics.items() for name, value in values.items()
    ]
    fact_rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in facts.items()
        if k not in SECTIONS
    )
    image = base64.b64encode(png).decode()
    base_section = f"<h2>Base model (before fine-tuning)</h2>{_table(base_rows)}" if base_rows else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left;vertical-align:top}}
pre{{white-space:pre-wrap;margin:0;font-family:inherit}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table>{fact_rows}</table>
<h2>Metrics</h2>{_table(rows)}
{base_section}
{generation_section(facts.get("generation") or [])}
<h2>Loss curve</h2><img alt="loss curve" src="data:image/png;base64,{image}">
</body></html>
"""
