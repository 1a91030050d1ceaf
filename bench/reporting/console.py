"""The leaderboard as `bench run` prints it in a terminal: the method, its seeds and as many headline metrics as fit
the console's width (rich measures the table), none cut or wrapped; every metric is in the leaderboard files."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from bench.reporting.markdown import HEADINGS, TIE_MARK, standing
from bench.scoring.estimate import format_estimate

# Headline metrics, most important first: a narrower console drops them from the end.
SHOWN = ["roc_auc", "pair_accuracy", "starc", "centred_pearson", "seed_ambiguity"]


def cell(estimate: dict | None) -> str:
    """"v [lo, hi]" with two decimals: the boards' own format, narrower."""
    return format_estimate(estimate, 2)


def summary_table(doc: dict, metrics: list[str]) -> Table:
    table = Table(title=f"{doc['task']} ({doc['profile']}): mean [95% CI]", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption=f"bold: best; {TIE_MARK}: tied with the best")
    table.add_column("method", no_wrap=True)
    table.add_column("seeds", no_wrap=True, justify="right")
    for m in metrics:
        table.add_column(HEADINGS[m], no_wrap=True)
    for row in doc["rows"]:
        cells = []
        for m in metrics:
            text, mark = cell(row["metrics"].get(m)), standing(row, m)
            cells.append(f"[bold]{text}[/bold]" if mark == "best" else f"{text} {TIE_MARK}" if mark == "tied"
                         else text)
        seeds = f"{row['n_seeds']}" + (f" ({len(row['failures'])} failed)" if row["failures"] else "")
        table.add_row(row["method"], seeds, *cells)
    return table


def print_summary(doc: dict, console: Console) -> None:
    """The widest table of the headline metrics (in SHOWN's order) that fits the console without wrapping."""
    for n in range(len(SHOWN), 0, -1):
        table = summary_table(doc, SHOWN[:n])
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        if natural <= console.width:
            break
    console.print(table)
    if n < len(SHOWN):
        console.print(f"{len(SHOWN) - n} more headline metrics (and the rest) are in the leaderboard files; a wider "
                      f"terminal shows more here.", highlight=False)
