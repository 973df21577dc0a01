"""The self-contained HTML report of an evaluation: summary, notes, per-class table, plots, run details."""

from __future__ import annotations

import base64
import html
import json

from tlkeras import tasks
from tlkeras.tasks.base import jsonable

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f5f8; } tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1rem 0 2rem; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 0.85rem; }
.notes li { color: #8a5a00; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6rem; } .card { border: 1px solid #ddd; padding: 0.4rem;
  width: 12rem; font-size: 0.82rem; } .card img { max-width: 96px; } .example { color: #333; }
"""


def cell(value) -> str:
    """One `<td>`: numbers right-aligned, structures as JSON, text escaped."""
    if value is None:
        return '<td class="num">—</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return f"<td><pre>{html.escape(text)}</pre></td>"
    return f"<td>{html.escape(str(value))}</td>"


def table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure_html(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# On load, the page counts its images that decoded: a headless browser (tests) reads it off the body.
_IMAGE_CHECK = ("<script>window.addEventListener('load',function(){var i=document.images,ok=0;"
                "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)ok++;}"
                "document.body.setAttribute('data-images',i.length);document.body.setAttribute('data-images-ok',ok);"
                "});</script>")


def page(title: str, parts: list[str]) -> str:
    """str: a whole HTML page, styles inline, so the file opens anywhere on its own."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>{_IMAGE_CHECK}</head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def gallery(wrong, examples, kind, labels) -> str:
    """str: the "Most confidently wrong" section: each example (a thumbnail, or its text) with its true and
    predicted class and the predicted probability."""
    if not wrong:
        return "<h2>Most confidently wrong</h2><p>No wrong predictions.</p>"
    cards = []
    for row, true, predicted, confidence in wrong:
        shown = kind.describe_example(examples[row])
        picture = ""
        if "image" in shown:
            data = base64.b64encode(shown["image"]).decode("ascii")
            picture = f'<img alt="example {row}" src="data:image/png;base64,{data}"><br>'
        text = html.escape(str(shown.get("text", ""))[:300])
        cards.append(f'<div class="card">{picture}<span class="example">{text}</span><br>true '
                     f"<b>{html.escape(labels[true])}</b>, predicted <b>{html.escape(labels[predicted])}</b> "
                     f"({confidence:.2f})</div>")
    return ("<h2>Most confidently wrong</h2><p>The wrong predictions made with the highest probability.</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def render(result: dict, images: list[tuple[str, bytes]], extra: dict | None, sections: list[str] = ()) -> str:
    """str: the report page for an evaluation `result` (see `tlkeras.evaluation.evaluate_predictions`).

    Args:
        result: dict. The metrics.
        images: list of (caption, PNG bytes).
        extra: dict or None. Run details shown as a key/value table.
        sections: list of str. More HTML sections, placed before the run details.
    """
    task = tasks.get(result["task"])
    parts = [f"<h1>{html.escape(result['title'])}</h1>"]
    count = result.get("num_classes") or result.get("num_labels") or result.get("num_targets")
    parts.append(f'<p class="meta">{task.name} · {result["num_samples"]} samples · {count} {task.item}s</p>')

    intervals = result.get("confidence_intervals") or {}
    summary = []
    for key, name in task.summary:
        if key not in result:
            continue
        if key == "top_k_accuracy":
            name = f"Top-{result['top_k']} accuracy"
        if key == "roc_auc":
            name = f"ROC AUC ({result['roc_auc_average']})"
        interval = intervals.get(key)
        shown = "—" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"
        summary.append([f"<td>{html.escape(name)}</td>", cell(result[key]), f'<td class="num">{shown}</td>'])
    level = result.get("confidence_level")
    interval_title = f"{level:.0%} bootstrap interval" if level else "interval"
    parts += ["<h2>Summary</h2>", table(["metric", "value", interval_title], summary)]

    if result["notes"]:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in result["notes"])
        parts.append(f'<h2>Notes</h2><ul class="notes">{items}</ul>')

    per_item = result.get(f"per_{task.item}")
    if per_item:
        columns = list(next(iter(per_item.values())))
        rows = [[f"<td>{html.escape(name)}</td>"] + [cell(m[c]) for c in columns] for name, m in per_item.items()]
        parts += [f"<h2>Per {task.item}</h2>", table([task.item] + columns, rows)]

    if images:
        parts.append("<h2>Plots</h2>")
        parts += [figure_html(caption, png) for caption, png in images]
    parts += list(sections)
    if extra:
        rows = [[f"<td>{html.escape(str(k))}</td>", cell(jsonable(v))] for k, v in extra.items()]
        parts += ["<h2>Run details</h2>", table(["key", "value"], rows)]
    return page(result["title"], parts)
