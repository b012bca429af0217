"""The HTML of ``eic report``'s page: sections, tables and inline SVG charts, drawn from a ``report.Page``.

Every value that came from a file enters the markup through ``e()`` (``html.escape``, quotes included) or as JSON
in the page's data element (``json_for_script``); the page's script and style are the package's own files
(``data/report.js``, ``data/report.css``), allowed by their hashes in the page's Content-Security-Policy, which
also forbids every fetch: an element a hostile name smuggled in could neither run nor reach the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..core.version import __version__
from .report_model import GENERATOR, Images, Page, Predictions, Shown, json_for_script, ordered, record_page, resolved

Series = tuple[str, list[tuple[float, float]]]


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("europeana_imgcls").joinpath("data", name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


class Items:
    """The images the page's script draws: each shown image once, the lists that name them."""

    def __init__(self, page: Page) -> None:
        self.page, self.images = page, page.images
        self.items: list[dict[str, Any]] = []
        self.lists: dict[str, list[int]] = {}
        self.known: dict[tuple[str, str], int] = {}

    def item(self, row: Shown, state: bool = True) -> int:
        key = (row.image, row.split)
        if key not in self.known:
            truth, predicted = " ".join(row.truth) or "none", " ".join(row.predicted) or "none"
            alt = f"{row.name}: true {truth}, predicted {predicted}"
            self.items.append(
                {
                    "img": self.images.add(resolved(row.image, self.page.run)),
                    "cam": self.page.cams.get(row.name),
                    "alt": alt,
                    "label": f"{row.name} · {predicted} {row.confidence:.2f}",
                    "title": f"{alt} ({row.confidence:.3f}, {row.split})",
                    "url": record_page(row.record),
                    "state": ("right" if row.right else "wrong") if state else "",
                }
            )
            self.known[key] = len(self.items) - 1
        return self.known[key]

    def plain(self, image: str, name: str, record: str | None, text: str) -> int:
        """An image that is no prediction (an audit's suspect, a duplicate)."""
        self.items.append(
            {
                "img": self.images.add(resolved(image, self.page.run)),
                "cam": None,
                "alt": f"{name}: {text}",
                "label": f"{name} · {text}",
                "title": f"{name}: {text}",
                "url": record_page(record),
                "state": "",
            }
        )
        return len(self.items) - 1

    def list(self, name: str, indices: Sequence[int]) -> str:
        self.lists[name] = list(indices)
        return f'<div class="thumbs" data-list="{e(name)}"></div>'


def sections(page: Page) -> list[str]:
    """The sections a page holds, by id, in order."""
    found = ["summary"]
    for said in page.sets:
        found += [f"per-class-{said.key}", *([f"confusion-{said.key}"] if said.single else []), f"gallery-{said.key}"]
    found += ["calibration"] if page.calibrated else []
    found += ["audit"] if page.audited else []
    found += ["curves"] if page.histories else []
    return found


def render(page: Page) -> str:
    items = Items(page)
    body = [_summary(page)]
    sizes = [len(_once(rows)) for said in page.sets if said.single for rows in _cells(said).values()]
    cap = Cap(page.per_cell, cell_cap(sizes, page.per_cell, page.max_images))
    for said in page.sets:
        body.append(_per_class(said))
        if said.single:
            body.append(_confusion(said, items, cap))
        body.append(_galleries(said, items, page.gallery))
    if page.calibrated:
        body.append(_calibration(page))
    if page.audited:
        body.append(_audit(page, items))
    if page.histories:
        body.append(_curves(page.histories))
    if page.notes:
        body.append('<section id="notes"><h2>Not in this report</h2><ul class="notes">')
        body += [f"<li>{e(note)}</li>" for note in page.notes]
        body.append("</ul></section>")
    style, script = _asset("report.css"), _asset("report.js")
    data = json_for_script({"images": page.images.data, "items": items.items, "lists": items.lists})
    # Nothing may be fetched, and nothing runs or styles the page but the package's own script and style.
    policy = (
        f"default-src 'none'; img-src data:; style-src {_hash(style)}; script-src {_hash(script)}; "
        "base-uri 'none'; form-action 'none'"
    )
    nav = " ".join(f'<a href="#{e(s)}">{e(_heading(s, page))}</a>' for s in sections(page))
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{e(policy)}">',
            f'<meta name="generator" content="{GENERATOR} {e(__version__)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(page.title)}</title><style>{style}</style></head><body>",
            f"<header><h1>{e(page.title)}</h1><nav>{nav}</nav></header><main>",
            *body,
            '</main><dialog id="lightbox" aria-label="image"><button type="button" class="close">Close (Esc)</button>',
            '<div class="body"></div></dialog>',
            f'<script type="application/json" id="eic-data">{data}</script>',
            f"<script>{script}</script></body></html>\n",
        ]
    )


def _heading(section: str, page: Page) -> str:
    kind, _, key = section.partition("-")
    names = {"summary": "Summary", "calibration": "Calibration", "audit": "Audit", "curves": "Training curves"}
    if section in names:
        return names[section]
    where = "test folds" if key == "test" else "evaluation"
    return {"per": "Per class", "confusion": "Confusion", "gallery": "Galleries"}.get(kind, kind) + f" ({where})"


# ---------------------------------------------------------------------------------------------
# Sections


def _summary(page: Page) -> str:
    lines = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in page.summary)
    out = [f'<section id="summary"><h2>Summary</h2><dl class="summary">{lines}</dl>']
    for title, metrics in (("Test metrics over the splits", page.metrics), ("Latest evaluation", page.evaluation)):
        if metrics:
            rows = "".join(f"<tr><td>{e(n)}</td><td>{m:.3f}</td><td>± {s:.3f}</td></tr>" for n, m, s in metrics)
            out.append(
                f"<h3>{e(title)}</h3><table><tr><th>metric</th><th>mean</th><th>spread (std)</th></tr>{rows}</table>"
            )
    return "".join(out) + "</section>"


def per_class_scores(said: Predictions) -> list[tuple[str, float, float, float, int]]:
    """Precision, recall, F1 and support per class of a set of predictions (one-vs-rest, pooled over splits)."""
    scores = []
    for name in said.classes:
        tp = sum(name in r.truth and name in r.predicted for r in said.rows)
        fp = sum(name not in r.truth and name in r.predicted for r in said.rows)
        fn = sum(name in r.truth and name not in r.predicted for r in said.rows)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append((name, precision, recall, f1, tp + fn))
    return scores


def _per_class(said: Predictions) -> str:
    heads = "".join(
        f'<th scope="col" aria-sort="none"><button type="button">{h}</button></th>'
        for h in ("class", "precision", "recall", "F1", "support")
    )
    rows = "".join(
        f'<tr><td data-v="{e(n)}">{e(n)}</td><td data-v="{p:.6f}">{p:.3f}</td><td data-v="{r:.6f}">{r:.3f}</td>'
        f'<td data-v="{f:.6f}">{f:.3f}</td><td data-v="{s}">{s}</td></tr>'
        for n, p, r, f, s in per_class_scores(said)
    )
    return (
        f'<section id="per-class-{said.key}"><h2>Per class: {e(said.title)}</h2>'
        f"<p>{len(said.rows)} predictions, pooled over the splits. Click a heading to sort.</p>"
        f'<table class="sortable"><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></section>'
    )


@dataclass(frozen=True)
class Cap:
    """The most images a confusion-matrix cell shows: ``per_cell`` as asked, or ``shown`` where the page-wide
    budget cut it (``cell_cap``)."""

    per_cell: int
    shown: int

    def said(self) -> str:
        if self.shown >= self.per_cell:
            return ""
        return (
            f" To keep the page to its budget of images (max_images), a cell shows at most its {self.shown} most "
            "confident images."
        )


def cell_cap(sizes: Sequence[int], per_cell: int, budget: int) -> int:
    """The most images a cell shows, where cells of ``sizes`` images share ``budget``: ``per_cell``, or the largest
    cap under it whose cells fit the budget, so a cell at or under the cap keeps all its images (at least 1)."""

    def total(cap: int) -> int:
        return sum(min(size, cap) for size in sizes)

    if total(per_cell) <= budget:
        return per_cell
    low, high = 1, per_cell  # total(high) > budget; the answer is the largest cap in [low, high) that fits
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if total(middle) <= budget else (low, middle)
    return low


def _cells(said: Predictions) -> dict[tuple[int, int], list[Shown]]:
    """A single-label set's predictions by (true class, predicted class), as indices of its classes."""
    where = {c: i for i, c in enumerate(said.classes)}
    cells: dict[tuple[int, int], list[Shown]] = {}
    for row in said.rows:
        if row.truth and row.predicted:
            cells.setdefault((where[row.truth[0]], where[row.predicted[0]]), []).append(row)
    return cells


def _confusion(said: Predictions, items: Items, cap: Cap) -> str:
    classes = said.classes
    cells = _cells(said)
    panel = f"cell-view-{said.key}"
    pooled = len(said.rows) > len({row.image for row in said.rows})  # an evaluation: each image by every split
    counted = " Counts are predictions, pooled over the splits: an image counts once a split." if pooled else ""
    out = [
        f'<section id="confusion-{said.key}"><h2>Confusion matrix: {e(said.title)}</h2>',
        f"<p>Rows are the true class, columns the prediction. A cell's count opens its images below.{counted}"
        f"{e(cap.said())}</p>",
        '<table class="confusion"><thead><tr><th class="corner" scope="col">truth \\ predicted</th>',
        *(f'<th scope="col">{e(c)}</th>' for c in classes),
        "</tr></thead><tbody>",
    ]
    for i, truth in enumerate(classes):
        total = sum(len(cells.get((i, j), [])) for j in range(len(classes))) or 1
        out.append(f'<tr><th scope="row">{e(truth)}</th>')
        for j, predicted in enumerate(classes):
            rows = ordered(cells.get((i, j), []))
            shade = f"h{min(9, int(10 * len(rows) / total))}" + (" diag" if i == j else "")
            if not rows:
                out.append(f'<td class="{shade}"><span>0</span></td>')
                continue
            name = f"cell:{said.key}:{i}:{j}"
            images = _once(rows)  # an image that several splits put here, shown once
            items.lists[name] = [items.item(r) for r in images[: cap.shown]]
            shown = "" if len(images) <= cap.shown else f" (the {cap.shown} most confident shown)"
            what = f"{len(rows)} prediction(s) of {len(images)} image(s)" if pooled else f"{len(rows)} image(s)"
            title = f"true {truth}, predicted {predicted}: {what}{shown}"
            out.append(
                f'<td class="{shade}"><a class="cell" href="#{panel}" data-panel="{panel}" data-cell="{e(name)}" '
                f'data-title="{e(title)}" aria-label="{e(title)}">{len(rows)}</a></td>'
            )
        out.append("</tr>")
    out.append(
        f'</tbody></table><div class="panel" id="{panel}" tabindex="-1" hidden>'
        '<h3></h3><div class="thumbs"></div></div>'
    )
    return "".join(out) + "</section>"


def _galleries(said: Predictions, items: Items, count: int) -> str:
    out = [
        f'<section id="gallery-{said.key}"><h2>Galleries: {e(said.title)}</h2>',
        "<p>Per class, the most confident right and wrong images (by their true class); a green frame is right, a "
        "red one wrong. Open an image for a larger view, and its Grad-CAM heatmap where the run drew one.</p>",
    ]
    for name in said.classes:
        members = [r for r in said.rows if name in r.truth]
        right = _once(r for r in members if r.right)[:count]
        wrong = _once(r for r in members if not r.right)[:count]
        explained = [r for r in _once(members) if r.name in items.page.cams][:count]
        out.append(f"<h3>{e(name)}</h3><p>right ({sum(r.right for r in members)} of {len(members)})</p>")
        out.append(items.list(f"right:{said.key}:{name}", [items.item(r) for r in right]))
        out.append(f"<p>wrong ({sum(not r.right for r in members)})</p>")
        out.append(items.list(f"wrong:{said.key}:{name}", [items.item(r) for r in wrong]))
        if explained:
            out.append("<p>with a Grad-CAM heatmap</p>")
            out.append(items.list(f"cam:{said.key}:{name}", [items.item(r) for r in explained]))
    return "".join(out) + "</section>"


def _once(rows: Iterable[Shown]) -> list[Shown]:
    """Most confident first, each image once (an evaluation scores every image with every split)."""
    first: dict[str, Shown] = {}
    for row in ordered(rows):
        first.setdefault(row.image, row)
    return list(first.values())


def _calibration(page: Page) -> str:
    said = page.calibrated
    assert said is not None
    ece = f" Expected calibration error {said.ece[0]:.3f} as trained, {said.ece[1]:.3f} scaled." if said.ece else ""
    reliability = chart(
        "reliability: share correct against stated confidence",
        [(label, [(c, a) for c, a, _ in bins]) for label, bins in said.bins.items()],
        "stated confidence",
        "share correct",
        diagonal=True,
    )
    out = [
        '<section id="calibration"><h2>Calibration</h2>',
        f"<p>From the run's out-of-fold predictions.{e(ece)} Thresholds marked: {e(said.source)}.</p>",
        f'<div class="charts">{reliability}</div><h3>Precision and coverage per class</h3><div class="charts">',
    ]
    for name, curve in said.curves.items():
        threshold = said.thresholds.get(name)
        marks = [] if threshold is None else [x for t, _, x in curve if t >= threshold][-1:]
        out.append(
            chart(
                f"{name}: precision against coverage"
                + (f" (threshold {threshold:.3f})" if threshold is not None else " (never emitted)"),
                [("precision", [(x, p) for _, p, x in curve])],
                "coverage",
                "precision",
                marks=marks,
            )
        )
    rows = "".join(
        f"<tr><td>{e(n)}</td><td>{'never emitted' if t is None else f'{t:.4f}'}</td></tr>"
        for n, t in said.thresholds.items()
    )
    out.append(f"</div><table><tr><th>class</th><th>threshold</th></tr>{rows}</table></section>")
    return "".join(out)


def _audit(page: Page, items: Items) -> str:
    said = page.audited
    assert said is not None
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in said.summary.items() if isinstance(v, int | float))
    out = [f'<section id="audit"><h2>Audit</h2><p>{e(counts)}</p><h3>Likely mislabels ({len(said.issues)} shown)</h3>']
    suspects = []
    for row in said.issues:
        name = row.get("ID") or row.get("image", "")
        text = f"given {row.get('given', '?')}, suggested {row.get('suggested', '?')}"
        suspects.append(items.plain(row.get("image", ""), name, row.get("ID") or None, text))
    out.append(items.list("audit:issues", suspects))
    out.append(f"<h3>Near-duplicate groups ({len(said.groups)} shown)</h3>")
    if not said.groups:
        out.append('<p class="empty">none found (or no embeddings to look for them)</p>')
    for n, group in enumerate(said.groups, start=1):
        flags = [
            k.replace("_", " ")
            for k in ("across_folds", "conflicting_labels", "across_providers")
            if group[0].get(k) == "True"
        ]
        out.append(f"<p>group {n}: {len(group)} images{e(' (' + ', '.join(flags) + ')' if flags else '')}</p>")
        members = [
            items.plain(
                r.get("image", ""), r.get("ID") or r.get("image", ""), r.get("ID") or None, r.get("category", "?")
            )
            for r in group
        ]
        out.append(items.list(f"audit:group:{n}", members))
    return "".join(out) + "</section>"


def _curves(histories: dict[str, list[dict[str, float]]]) -> str:
    out = ['<section id="curves"><h2>Training curves</h2><div class="charts">']
    for split, history in histories.items():
        losses: list[Series] = [
            (key, [(r["epoch"], r[key]) for r in history if key in r]) for key in ("train_loss", "val_loss")
        ]
        scores: list[Series] = [
            (key, [(r["epoch"], r[key]) for r in history if key in r])
            for key in ("accuracy", "f1", "micro_f1", "macro_f1", "mean_average_precision")
            if key in history[0]
        ]
        out.append(chart(f"{split}: loss per epoch", losses, "epoch", "loss"))
        if scores:
            out.append(chart(f"{split}: validation scores", scores, "epoch", "score", y_range=(0.0, 1.0)))
    return "".join(out) + "</div></section>"


# ---------------------------------------------------------------------------------------------
# Charts, drawn as inline SVG


def _above(low: float, high: float) -> float:
    """``high``, or a value above ``low`` where the range is empty: a constant series (even of 1e308, where
    ``low + 1 == low``) still gets an axis."""
    return high if high > low else low + max(abs(low) * 1e-6, 1.0)


def chart(
    title: str,
    series: list[Series],
    x_label: str,
    y_label: str,
    *,
    diagonal: bool = False,
    marks: Sequence[float] = (),
    y_range: tuple[float, float] | None = None,
) -> str:
    """A small line chart: one polyline (and dots) a series, axes with their ranges, a legend; ``marks`` draws
    vertical lines at those x values. Unit charts (calibration) span 0 to 1 on both axes."""
    # The legend goes above the plot, a line a series, so that it never hides a curve.
    width, height, left, bottom, right = 348, 220 + 13 * len(series), 48, 34, 10
    top = 30 + 13 * len(series)
    points = [p for _, values in series for p in values]
    unit = diagonal or x_label == "coverage"
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x0, x1 = (0.0, 1.0) if unit else (min(xs), max(xs))
    y0, y1 = (0.0, 1.0) if unit else y_range or (min(ys), max(ys))
    x1, y1 = _above(x0, x1), _above(y0, y1)

    def at(x: float, y: float) -> tuple[float, float]:
        sx = left + (x - x0) / (x1 - x0) * (width - left - right)
        sy = height - bottom - (y - y0) / (y1 - y0) * (height - bottom - top)
        return sx, sy

    def line(values: Sequence[tuple[float, float]]) -> str:
        return " ".join("{:.1f},{:.1f}".format(*at(x, y)) for x, y in values)

    middle = (top + height - bottom) // 2
    out = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><title>{e(title)}</title>',
        f'<text x="8" y="14">{e(title[:62])}</text>',
        f'<polyline class="axis" points="{line([(x0, y1), (x0, y0), (x1, y0)])}"/>',
        f'<text x="{left}" y="{height - 18}">{x0:.3g}</text>',
        f'<text x="{width - right}" y="{height - 18}" text-anchor="end">{x1:.3g}</text>',
        f'<text x="{(left + width) // 2}" y="{height - 4}" text-anchor="middle">{e(x_label)}</text>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y0:.3g}</text>',
        f'<text transform="rotate(-90)" x="{-middle}" y="12" text-anchor="middle">{e(y_label)}</text>',
    ]
    if diagonal:
        out.append(f'<polyline class="diagonal" points="{line([(0, 0), (1, 1)])}"/>')
    for x in marks:
        out.append(f'<polyline class="mark" points="{line([(x, y0), (x, y1)])}"/>')
    for n, (label, values) in enumerate(series):
        cls = f"s{n % 6}"
        if values:
            out.append(f'<polyline class="{cls}" points="{line(values)}"/>')
            if len(values) <= 40:
                out += [
                    '<circle class="{}" r="2.2" cx="{:.1f}" cy="{:.1f}"/>'.format(cls, *at(x, y)) for x, y in values
                ]
        out.append(f'<text class="legend {cls}" x="{left + 8}" y="{28 + 13 * n}">— {e(label)}</text>')
    return "".join(out) + "</svg>"


__all__ = ["Images", "chart", "per_class_scores", "render", "sections"]
