"""The leaderboard as one self-contained HTML page: inline CSS, figures as base64 PNG; no scripts, no network.

Rendered from the leaderboard JSON document alone (it carries the figure data), so `bench leaderboard` rebuilds the
page exactly. Byte-identical output needs deterministic PNGs: matplotlib's default style (not the user's rc file),
the Agg canvas, and no "Software" entry (matplotlib writes no date into PNGs).
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from bench.reporting.markdown import COLUMNS, HEADINGS, TIE_MARK, coverage_lines, power_lines, standing, tuning_lines
from bench.reporting.sections import ReportSections
from bench.scoring.estimate import format_estimate
from bench.scoring.scorer import METRICS

STABILITY_METRICS = ["roc_auc", "pair_accuracy", "centred_pearson", "starc"]
DPI = 100

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1500px;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; font-size: 0.82rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.45rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
td.best { font-weight: 700; background: #dafbe1; }
td.tied { background: #f1f8ec; }
.ci { color: #57606a; font-size: 0.92em; }
.note { color: #57606a; max-width: 70rem; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9rem; max-width: 70rem; }
dl.metrics dt { font-weight: 600; } dl.metrics dd { margin: 0 0 0.4rem 1.5rem; color: #57606a; }
"""


def render(doc: dict, sections: ReportSections | None = None) -> str:
    rows = doc["rows"]
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>irl-bench leaderboard: {e(doc['task'])} ({e(doc['profile'])})</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Leaderboard: <code>{e(doc['task'])}</code> (profile <code>{e(doc['profile'])}</code>)</h1>",
        f'<p class="note">Mean over seeds on held-out test items with a 95% CI from a two-level bootstrap over seeds '
        f"× test prompts ({doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}). "
        f"Rows sorted by ROC-AUC. <b>Bold</b>: best mean. {TIE_MARK}: tied with the best — a paired bootstrap of the "
        f"difference cannot separate them (Holm-corrected p ≥ {doc['comparisons']['alpha']}); hover a cell for "
        f"the difference and p-value.</p>",
        '<div class="scroll">', _main_table(rows), "</div>",
        *_power(doc),
    ]
    norm = doc["normalisation"]
    if norm["available"]:
        parts += [
            "<h2>Normalised scores</h2>",
            f'<p class="note">(x − {e(norm["null"])}) / ({e(norm["top"])} − {e(norm["null"])}): the null baseline '
            f"scores 0 and the ground-truth oracle 1 on every metric, whatever its direction; 95% CI from the same "
            f"paired resamples. Above 1 is possible where the oracle is not the ceiling.</p>",
            '<div class="scroll">', _normalised_table(rows, norm), "</div>",
        ]
    parts += ["<h2>Figures</h2>"]
    parts += [figure_html(_metric_bars(doc), "Mean of each metric per method with its 95% CI (error bars). "
                      f"Arrows give the direction; {TIE_MARK} above a bar: tied with the best (outlined).")]
    scatter = doc.get("figures", {}).get("scatter")
    if scatter and scatter["methods"]:
        parts += [figure_html(_scatter(doc, scatter),
                          f"Learned reward against the ground truth R* on test completions, both centred per prompt "
                          f"(rewards are identified only up to a per-prompt shift and a scale), one seed per method; "
                          f"{scatter['prompts']} of {scatter['of_prompts']} test prompts shown.")]
    parts += [figure_html(_stability(doc), "Seed-to-seed stability: each dot is one seed's value on the full test set, "
                                       "the bar the mean over seeds.")]
    parts += markdown_as_html(coverage_lines(doc))
    if sections is not None:
        parts += sections.html(doc)
    failed = [(r["method"], f) for r in rows for f in r["failures"]]
    if failed:
        parts += ["<h2>Failed trials</h2><ul>"]
        parts += [f"<li><code>{e(m)}</code> seed {e(str(f.get('seed', '?')))} (trial <code>{e(f['trial_id'])}</code>): "
                  f"{e(str(f['error']))}</li>" for m, f in failed]
        parts += ["</ul>"]
    parts += markdown_as_html(tuning_lines(rows))
    parts += ["<h2>Metrics</h2>", '<dl class="metrics">']
    for m in COLUMNS:
        arrow = "↑ higher is better" if METRICS[m][0] > 0 else "↓ lower is better"
        parts += [f"<dt>{e(HEADINGS[m])} ({arrow})</dt><dd>{e(doc['metric_legend'][m]['description'])}</dd>"]
    parts += ["</dl>", "<h2>Provenance</h2>", _provenance(doc), "</body></html>", ""]
    return "\n".join(parts)


def _power(doc: dict) -> list[str]:
    """The Markdown power paragraph and probability-of-improvement table, as HTML."""
    return markdown_as_html(power_lines(doc))


def markdown_as_html(lines: list[str]) -> list[str]:
    """The few Markdown shapes the boards write — paragraphs, headings and pipe tables — as HTML."""
    e = html.escape
    parts, in_table = [], False
    for line in lines:
        if line.startswith("|---"):
            continue
        if in_table and not line.startswith("|"):
            parts.append("</tbody></table></div>")
            in_table = False
        if not line:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and not in_table:
            parts.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{e(c)}</th>" for c in cells)
                         + "</tr></thead><tbody>")
            in_table = True
        elif line.startswith("|"):
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            parts.append(f"<h{level}>{e(line.lstrip('#').strip())}</h{level}>")
        else:
            parts.append(f'<p class="note">{e(line.replace("**", "").replace("`", ""))}</p>')
    if in_table:
        parts.append("</tbody></table></div>")
    return parts


def _cell(row: dict, metric: str) -> str:
    stat, mark = row["metrics"].get(metric), standing(row, metric)
    if not stat or stat["mean"] is None:
        return "<td>–</td>"
    text = f"{stat['mean']:.3f}"
    if stat["ci"][0] is not None:
        text += f' <span class="ci">[{stat["ci"][0]:.3f}, {stat["ci"][1]:.3f}]</span>'
    c = row["comparison"].get(metric)
    title = ""
    if c and not c["best"] and c["diff"] is not None:
        ci = "" if c["ci"][0] is None else f" [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
        p = "" if c["p_holm"] is None else f", Holm p = {c['p_holm']:.3g}"
        tip = f"vs {c['vs']}: {c['diff']:+.3f}{ci}{p}"
        title = f' title="{html.escape(tip)}"'
    if mark == "tied":
        text += f" {TIE_MARK}"
    return f'<td class="{mark}"{title}>{text}</td>' if mark else f"<td{title}>{text}</td>"


def _main_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(HEADINGS[m])} {'↑' if METRICS[m][0] > 0 else '↓'}</th>" for m in COLUMNS)
    body = []
    for r in rows:
        seeds = str(r["n_seeds"]) + (f" ({len(r['failures'])} failed)" if r["failures"] else "")
        body.append(f"<tr><td>{html.escape(r['method'])}</td><td>{seeds}</td>" + "".join(_cell(r, m) for m in COLUMNS)
                    + "</tr>")
    return f"<table><thead><tr><th>method</th><th>seeds</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _normalised_table(rows: list[dict], norm: dict) -> str:
    shown = [m for m in COLUMNS if m in norm["metrics"]]
    head = "".join(f"<th>{html.escape(HEADINGS[m])}</th>" for m in shown)
    body = [f"<tr><td>{html.escape(r['method'])}</td>"
            + "".join(f"<td>{html.escape(format_estimate(r['normalised'].get(m), 2))}</td>" for m in shown) + "</tr>"
            for r in rows if r["method"] not in (norm["null"], norm["top"])]
    return f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _provenance(doc: dict) -> str:
    prov = doc["provenance"]
    items = {
        "git commit": prov["git_commit"],
        "seeds": ", ".join(str(s) for s in prov["seeds"]),
        "task config": json.dumps(prov["task_config"], sort_keys=True),
        "artifacts": f"demos {prov['artifacts']['demos']}, truth {prov['artifacts']['truth']}",
        "versions": ", ".join(f"{k} {v}" for k, v in sorted(prov["versions"].items())),
        "hardware": prov["hardware"],
        "run started": prov["started"],
    }
    return "<ul>" + "".join(f"<li>{k}: <code>{html.escape(str(v))}</code></li>" for k, v in items.items()) + "</ul>"


# -- figures ---------------------------------------------------------------------------------------------------------

def figure_html(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib loads only when a page is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend the user configured
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def plotting(draw):
    """Draw under matplotlib's default style, so a user's matplotlibrc cannot change the page's bytes."""
    import matplotlib  # matplotlib loads only when a page is drawn
    import matplotlib.style

    def wrapped(*args):
        with matplotlib.style.context("default"), matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10}):
            return draw(*args)
    return wrapped


def method_colours(rows: list[dict]) -> dict[str, tuple]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {r["method"]: palette(i % 10) for i, r in enumerate(rows)}


@plotting
def _metric_bars(doc: dict) -> bytes:
    rows = [r for r in doc["rows"] if r["n_seeds"]]
    colours = method_colours(doc["rows"])
    ncols = 4
    nrows = -(-len(COLUMNS) // ncols)
    fig = new_figure(3.6 * ncols, 2.7 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = np.arange(len(rows))
    for ax, m in zip(axes, COLUMNS):
        means = np.array([np.nan if r["metrics"][m]["mean"] is None else r["metrics"][m]["mean"] for r in rows])
        lo = np.array([np.nan if r["metrics"][m]["ci"][0] is None else r["metrics"][m]["ci"][0] for r in rows])
        hi = np.array([np.nan if r["metrics"][m]["ci"][1] is None else r["metrics"][m]["ci"][1] for r in rows])
        err = np.vstack([np.clip(means - lo, 0, None), np.clip(hi - means, 0, None)])
        marks = [standing(r, m) for r in rows]
        ax.bar(x, np.nan_to_num(means), color=[colours[r["method"]] for r in rows],
               edgecolor=["black" if k in ("best", "tied") else "none" for k in marks], linewidth=1.2)
        ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3, linewidth=1)
        for xi, k, top in zip(x, marks, hi):
            if k == "tied" and np.isfinite(top):
                ax.annotate(TIE_MARK, (xi, top), ha="center", va="bottom", fontsize=11)
        ax.set_title(f"{HEADINGS[m]} {'↑' if METRICS[m][0] > 0 else '↓'}")
        ax.set_xticks(x, [r["method"] for r in rows], rotation=35, ha="right")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.margins(y=0.12)
    for ax in axes[len(COLUMNS):]:
        ax.set_visible(False)
    return png_bytes(fig)


@plotting
def _scatter(doc: dict, scatter: dict) -> bytes:
    colours = method_colours(doc["rows"])
    order = [r["method"] for r in doc["rows"] if r["method"] in scatter["methods"]]
    per_seed = {r["method"]: r for r in doc["rows"]}
    ncols = min(4, len(order))
    nrows = -(-len(order) // ncols)
    fig = new_figure(3.4 * ncols, 3.1 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    truth = np.array(scatter["truth"], dtype=float)
    for ax, method in zip(axes, order):
        entry = scatter["methods"][method]
        r = np.array([np.nan if v is None else v for v in entry["reward"]], dtype=float)
        ax.scatter(truth, r, s=9, alpha=0.6, color=colours[method], edgecolors="none")
        row = per_seed[method]
        title = f"{method} (seed {entry['seed']})"
        if entry["seed"] in row["seeds"]:
            values = row["per_seed"].get("centred_pearson", [None] * len(row["seeds"]))
            value = values[row["seeds"].index(entry["seed"])]
            if value is not None:
                title += f"\ncentred r = {value:.3f}"
        ax.set_title(title)
        ax.set_xlabel("R* (centred)")
        ax.set_ylabel("r̂ (centred)")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
    for ax in axes[len(order):]:
        ax.set_visible(False)
    return png_bytes(fig)


@plotting
def _stability(doc: dict) -> bytes:
    rows = [r for r in doc["rows"] if r["n_seeds"]]
    colours = method_colours(doc["rows"])
    fig = new_figure(3.6 * len(STABILITY_METRICS), 3.0)
    axes = fig.subplots(1, len(STABILITY_METRICS), squeeze=False).ravel()
    jitter = np.random.default_rng(0)  # fixed: the page must rebuild byte for byte
    for ax, m in zip(axes, STABILITY_METRICS):
        for i, r in enumerate(rows):
            values = np.array([np.nan if v is None else v for v in r["per_seed"].get(m, [])], dtype=float)
            if not len(values):
                continue
            ax.scatter(i + jitter.uniform(-0.15, 0.15, len(values)), values, s=16, color=colours[r["method"]],
                       edgecolors="black", linewidths=0.3, zorder=3)
            ax.hlines(np.nanmean(values), i - 0.3, i + 0.3, color="black", linewidth=1.5, zorder=2)
        ax.set_title(f"{HEADINGS[m]} {'↑' if METRICS[m][0] > 0 else '↓'} per seed")
        ax.set_xticks(np.arange(len(rows)), [r["method"] for r in rows], rotation=35, ha="right")
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    return png_bytes(fig)
