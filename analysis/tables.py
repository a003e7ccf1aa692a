"""Ablation tables: configurations x metrics, mean ± std (n) over seeds, Δ against the baseline
with Holm-corrected significance, the best value of each column in bold, the configuration selected
on validation marked; and the paper's reference tables.

Only finished trials enter a table (a trial stopped early by a scheduler has not been trained as
long, so its metrics are not comparable). Δ compares a configuration with the baseline of the same
context (same values of the non-regularizer searched parameters), paired on seed, two-sided
(analysis.stats); one table is one family: Holm corrects over every comparison in it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

from analysis.configs import BASELINE, configuration_order, with_batch_size
from analysis.metrics import NOT_COMPARED, higher_is_better
from analysis.stats import ALPHA, Comparison, compare, correct, per_seed

SIGNIFICANT_MARK = "*"  # Holm-corrected p < ALPHA within the table
SELECTED_MARK = "◀ selected"  # the configuration chosen on the validation metric
MAX_ROWS = 12


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int
    comparison: Comparison | None  # None for a baseline or when no baseline shares the context
    best: bool = False

    @property
    def mark(self) -> str:
        return SIGNIFICANT_MARK if self.comparison is not None and self.comparison.significant else ""


@dataclass(frozen=True)
class AblationTable:
    title: str
    metrics: list[str]
    rows: list[str]
    cells: dict[tuple[str, str], Cell]
    selected: str | None = None  # the configuration chosen on validation (analysis.summary.select_configuration)
    batch_sizes: dict[str, int] = field(default_factory=dict)  # per configuration: weights mean this batch

    @property
    def family_size(self) -> int:
        """Comparisons with a p-value in this table: Holm's m."""
        return sum(1 for cell in self.cells.values() if cell.comparison is not None
                   and cell.comparison.p_value is not None)

    def row_label(self, row: str) -> str:
        """The configuration as shown: its batch size beside its weights, and the selection mark."""
        label = with_batch_size(row, self.batch_sizes.get(row))
        return f"{label} {SELECTED_MARK}" if row == self.selected else label

    def legend(self) -> str:
        return (f"Mean ± std (n seeds) on the test split; Δ = mean difference vs. the baseline of the same context; "
                f"{SIGNIFICANT_MARK} Holm-corrected p < {ALPHA} within this table (family of m = {self.family_size} "
                f"two-sided exact sign-flip tests over paired seeds); bold = best in column"
                + (f"; {SELECTED_MARK} = chosen on the validation metric." if self.selected is not None else "."))

    def cell_text(self, row: str, metric: str, latex: bool = False) -> str:
        cell = self.cells.get((row, metric))
        if cell is None or cell.n == 0:
            return "–"
        pm = " $\\pm$ " if latex else " ± "
        text = f"{format_value(cell.mean)}{pm}{format_value(cell.std)} ({cell.n})"
        if cell.comparison is not None:
            delta = "$\\Delta$" if latex else "Δ"
            mark = "$^{*}$" if latex and cell.mark else cell.mark
            text += f" {delta} {cell.comparison.delta:+.3f}{mark}"
        return text

    def frame(self) -> pd.DataFrame:
        """Long form, one row per (configuration, metric): the numbers behind every cell (the CSV)."""
        records = [
            {"config": row, "metric": metric, "mean": cell.mean, "std": cell.std, "n": cell.n,
             **_comparison_fields(cell.comparison), "best": cell.best, "selected": row == self.selected,
             "batch_size": self.batch_sizes.get(row)}
            for (row, metric), cell in self.cells.items()
        ]
        return pd.DataFrame.from_records(records)

    def to_csv(self) -> str:
        return self.frame().to_csv(index=False)

    def to_markdown(self) -> str:
        header = "| configuration | " + " | ".join(self.metrics) + " |"
        lines = [header, "|" + "---|" * (len(self.metrics) + 1)]
        for row in self.rows:
            texts = []
            for metric in self.metrics:
                text = self.cell_text(row, metric).replace("*", "\\*")  # the mark, not markdown emphasis
                cell = self.cells.get((row, metric))
                texts.append(f"**{text}**" if cell is not None and cell.best else text)
            lines.append(f"| {_escape_md(self.row_label(row))} | " + " | ".join(texts) + " |")
        return "\n".join(lines) + "\n\n" + self.legend() + "\n"

    def _styler(self, latex: bool) -> pd.io.formats.style.Styler:
        texts = pd.DataFrame(
            [[self.row_label(row), *(self.cell_text(row, metric, latex) for metric in self.metrics)]
             for row in self.rows],
            columns=["configuration", *self.metrics],
        )
        is_best = [[False, *((row, m) in self.cells and self.cells[(row, m)].best for m in self.metrics)]
                   for row in self.rows]
        css = np.where(np.array(is_best, dtype=bool).reshape(texts.shape), "font-weight: bold;", "")
        escape = "latex" if latex else "html"
        return (texts.style.apply(lambda _: css, axis=None).hide(axis="index")
                .format(escape=escape, subset=["configuration"]).format_index(escape=escape, axis=1))

    def to_latex(self, label: str) -> str:
        """A booktabs table (needs \\usepackage{booktabs}); best values in \\bfseries."""
        caption = f"{_escape_latex(self.title)}. Mean $\\pm$ std (n seeds), test split; $\\Delta$ vs.\\ baseline; " \
                  f"$^{{*}}$ Holm-corrected $p<{ALPHA}$ within this table (m = {self.family_size}, two-sided " \
                  f"exact sign-flip tests over paired seeds); selected = chosen on the validation metric."
        return self._styler(latex=True).to_latex(
            hrules=True, convert_css=True, caption=caption, label=label,
            column_format="l" + "r" * len(self.metrics), position_float="centering",
        )

    def to_html(self) -> str:
        return self._styler(latex=False).set_table_attributes('class="ablation"').to_html()


def _comparison_fields(comparison: Comparison | None) -> dict[str, object]:
    if comparison is None:
        return {"delta": math.nan, "relative_delta": math.nan, "test": "", "n_pairs": 0, "p_value": math.nan,
                "corrected_p": math.nan, "family_size": 0, "effect_size": "", "effect": math.nan,
                "effect_ci_low": math.nan, "effect_ci_high": math.nan, "verdict": ""}
    ci_low, ci_high = comparison.effect_ci or (math.nan, math.nan)
    return {
        "delta": comparison.delta, "relative_delta": comparison.relative, "test": comparison.test,
        "n_pairs": comparison.n_pairs,
        "p_value": math.nan if comparison.p_value is None else comparison.p_value,
        "corrected_p": math.nan if comparison.corrected_p is None else comparison.corrected_p,
        "family_size": comparison.family_size or 0, "effect_size": comparison.effect_name,
        "effect": math.nan if comparison.effect is None else comparison.effect,
        "effect_ci_low": ci_low, "effect_ci_high": ci_high, "verdict": comparison.status(),
    }


def format_value(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def _escape_md(text: str) -> str:
    return text.replace("|", "\\|")


def _escape_latex(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text)


# --------------------------------------------------------------------------- building


def select_rows(trials: pd.DataFrame, rank_metric: str | None, mode: str,
                max_rows: int = MAX_ROWS) -> list[str]:
    """All configurations when few; else baselines, on/off combinations and the best searched weights."""
    order = configuration_order(trials)
    if len(order) <= max_rows:
        return order
    labels = trials.drop_duplicates("config").set_index("config")["regularizer_label"]
    fixed = [config for config in order if labels[config] == BASELINE or labels[config].startswith("+")]
    if rank_metric is None or rank_metric not in trials:
        return fixed[:max_rows]
    means = trials.groupby("config")[rank_metric].mean().drop(fixed, errors="ignore")
    best = means.sort_values(ascending=(mode == "min")).index[: max(max_rows - len(fixed), 3)]
    return fixed + [config for config in order if config in set(best)]


def ablation_table(trials: pd.DataFrame, metrics: list[str], title: str, rank_metric: str | None = None,
                   mode: str = "max", max_rows: int = MAX_ROWS, selected: str | None = None) -> AblationTable:
    """Build the table from `load()`'s trials; only finished trials count. Rows are ranked (when there
    are too many) by `rank_metric`, which should be the validation metric; the table is one Holm family."""
    finished = trials[trials["status"] == "finished"]
    metrics = [metric for metric in metrics if metric in finished and finished[metric].notna().any()]
    rows = select_rows(finished, rank_metric, mode, max_rows) if not finished.empty else []
    by_config = {config: group for config, group in finished.groupby("config")}
    cells: dict[tuple[str, str], Cell] = {}
    for row in rows:
        group = by_config[row]
        baseline = _baseline_of(finished, group)
        for metric in metrics:
            values = per_seed(group[metric], group["seed"])
            comparison = None
            if (baseline is not None and not group["is_baseline"].iloc[0] and len(values)
                    and metric not in NOT_COMPARED):
                comparison = compare(values, per_seed(baseline[metric], baseline["seed"]))
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            cells[(row, metric)] = Cell(float(values.mean()) if len(values) else math.nan, std, len(values),
                                        comparison)
    keys = list(cells)
    corrected = correct([cells[key].comparison for key in keys], title)
    cells = {key: dataclasses.replace(cells[key], comparison=comparison)
             for key, comparison in zip(keys, corrected, strict=True)}
    if selected is not None and selected not in rows:
        selected = None
    return AblationTable(title, metrics, rows, _mark_best(cells, rows, metrics), selected,
                         batch_sizes_of(finished, rows))


def batch_sizes_of(trials: pd.DataFrame, rows: list[str]) -> dict[str, int]:
    """Each configuration's batch size (its trials' train.batch_size, which loading resolves for every trial)."""
    if "train.batch_size" not in trials:
        return {}
    first = trials.drop_duplicates("config").set_index("config")["train.batch_size"]
    return {row: int(first[row]) for row in rows if row in first.index and pd.notna(first[row])}


def _baseline_of(finished: pd.DataFrame, group: pd.DataFrame) -> pd.DataFrame | None:
    context = group["context"].iloc[0]
    baseline = finished[finished["is_baseline"] & (finished["context"] == context)]
    return baseline if not baseline.empty else None


def _mark_best(cells: dict[tuple[str, str], Cell], rows: list[str], metrics: list[str]) -> dict:
    marked = dict(cells)
    for metric in metrics:
        direction = higher_is_better(metric)
        means = {row: cells[(row, metric)].mean for row in rows if cells[(row, metric)].n > 0}
        if direction is None or len(set(means.values())) < 2:
            continue  # no direction, or every configuration ties: nothing stands out
        best_value = max(means.values()) if direction else min(means.values())
        for row, mean in means.items():
            if mean == best_value:
                cell = cells[(row, metric)]
                marked[(row, metric)] = Cell(cell.mean, cell.std, cell.n, cell.comparison, best=True)
    return marked


# --------------------------------------------------------------------------- the paper's numbers

PAPER_TABLES = {
    "table1_zero_shot.csv": "Table 1 (zero-shot top-1, %)",
    "table2_distribution_shift.csv": "Table 2 (distribution shift, top-1, %)",
    "table3_linear_probe.csv": "Table 3 (linear probe top-1, %)",
    "table4_albef_downstream.csv": "Table 4 (ALBEF downstream, %)",
}


def paper_table(file_name: str) -> pd.DataFrame:
    """One of the paper's tables (analysis/data/*.csv, percent), read from the installed package."""
    with resources.files("analysis").joinpath("data", file_name).open() as handle:
        return pd.read_csv(handle)


def _normalized(name: str) -> str:
    name = re.sub(r"[^a-z0-9]", "", name.lower())
    return {"imagenet": "imagenet1k", "imagenetval": "imagenet1k"}.get(name, name)


def reference_table(trials: pd.DataFrame, zeroshot_sets: list[str]) -> pd.DataFrame | None:
    """The paper's zero-shot top-1 (tables 1-2) beside the study's for the data sets both evaluate
    (the study's fractions shown as percent); None when the study shares no data set with the paper."""
    paper = pd.concat([paper_table("table1_zero_shot.csv"), paper_table("table2_distribution_shift.csv")])
    paper_names = {_normalized(name): name for name in paper["dataset"].unique()}
    matched = {paper_names[_normalized(name)]: name
               for name in zeroshot_sets if _normalized(name) in paper_names}
    if not matched:
        return None
    wide = paper[paper["dataset"].isin(matched)].pivot(index="method", columns="dataset", values="top1")
    wide = wide.reindex(paper["method"].drop_duplicates()).reindex(columns=list(matched))
    wide.index = [f"paper: {method}" for method in wide.index]
    finished = trials[trials["status"] == "finished"]
    study_rows = {}
    for config, group in finished.groupby("config", sort=False):
        study_rows[f"this study: {config}"] = {
            paper_name: 100 * group[f"zeroshot/{name}/top1"].mean() for paper_name, name in matched.items()
        }
    ordered = [f"this study: {config}" for config in configuration_order(finished)]
    study = pd.DataFrame.from_dict(study_rows, orient="index").reindex(ordered)
    return pd.concat([wide, study]).round(2)
