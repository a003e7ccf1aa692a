"""Figures of a study (seaborn on matplotlib's Agg backend); every function returns its Figure.

Weights are shown on a log axis; weight 0 (log-undefined) is drawn as the baseline: a dashed
line with a 95% confidence band at the baseline's mean.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from analysis.configs import (  # noqa: E402
    NO_OTHER_REGULARIZER,
    REGULARIZER_KEYS,
    REGULARIZER_NAMES,
    configuration_order,
    regularizers_beside_align,
)
from trainers.storage import write_atomic  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
FIGURE_FORMATS = ("png", "svg")


def weight_label(weight_key: str) -> str:
    """Axis label for a regularizer weight: 'GC weight'."""
    return f"{REGULARIZER_NAMES.get(weight_key, weight_key)} weight"


def save_figure(figure: plt.Figure, directory: Path, stem: str) -> dict[str, Path]:
    """Write the figure as PNG and SVG (atomically) and close it; returns {format: path}."""
    paths = {}
    for fmt in FIGURE_FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=100)
        paths[fmt] = write_atomic(directory / f"{stem}.{fmt}", buffer.getvalue())
    plt.close(figure)
    return paths


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "finished"]


def _panels(count: int, width: float = 4.2, height: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.remove()
    return figure, list(axes.flat[:count])


def _mean_ci(values: pd.Series) -> tuple[float, float]:
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.sem(values) * stats.t.ppf(0.975, len(values) - 1))


# --------------------------------------------------------------------------- weights and combinations


def _isolate(trials: pd.DataFrame, weight_key: str) -> pd.DataFrame:
    """Trials in which only `weight_key` among the regularizers may be on (when there are enough)."""
    others = [key for key in REGULARIZER_KEYS if key != weight_key and key in trials]
    alone = trials[(trials[others].fillna(0.0) == 0.0).all(axis=1)] if others else trials
    return alone if (alone[weight_key] > 0).any() else trials


def metric_vs_weight(trials: pd.DataFrame, weight_key: str, metrics: list[str]) -> plt.Figure:
    """One panel per metric: mean over seeds with a 95% CI band against the weight (log axis)."""
    data = _isolate(_finished(trials), weight_key)
    hue = "context" if data["context"].nunique() > 1 else None
    figure, axes = _panels(len(metrics))
    palette = dict(zip(sorted(data["context"].unique()), sns.color_palette(n_colors=data["context"].nunique()),
                       strict=True))
    for ax, metric in zip(axes, metrics, strict=True):
        weighted = data[data[weight_key] > 0].dropna(subset=[metric])
        if not weighted.empty:
            sns.lineplot(data=weighted, x=weight_key, y=metric, hue=hue, palette=palette if hue else None,
                         errorbar=("ci", 95), marker="o", ax=ax, legend=ax is axes[0])
            ax.set_xscale("log")
        for context, group in data[data[weight_key] == 0].dropna(subset=[metric]).groupby("context"):
            mean, half_width = _mean_ci(group[metric])
            color = palette[context]
            ax.axhline(mean, color=color, linestyle="--", label=f"baseline (weight 0) {context}".strip())
            ax.axhspan(mean - half_width, mean + half_width, color=color, alpha=0.15)
        _tick_at_sampled(ax, sorted(data.loc[data[weight_key] > 0, weight_key].unique()))
        ax.set_xlabel(f"{weight_label(weight_key)} (log scale)")
        ax.set_ylabel(metric)
    axes[0].legend(fontsize="small")
    figure.suptitle(f"Metrics against {weight_label(weight_key)} (mean, 95% CI over seeds)")
    figure.tight_layout()
    return figure


MAX_SAMPLED_TICKS = 8


def _tick_at_sampled(ax: plt.Axes, weights: list[float]) -> None:
    """Ticks at the weights the study ran (when few enough to read), written as numbers, not powers of ten."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    if 0 < len(weights) <= MAX_SAMPLED_TICKS:
        ax.set_xticks(_apart_on_log_axis(weights, ax.get_xlim()))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


# A tick label is about a tenth of a panel wide: a tick nearer its neighbour than that would overlap it.
MIN_TICK_GAP = 0.1


def _apart_on_log_axis(values: list[float], limits: tuple[float, float]) -> list[float]:
    """`values` (ascending) without those closer to the last one kept than MIN_TICK_GAP of the log axis."""
    low, high = (math.log10(limit) for limit in limits) if min(limits) > 0 else (0.0, 0.0)
    gap = MIN_TICK_GAP * (high - low)
    kept: list[float] = []
    for value in values:
        if not kept or math.log10(value) - math.log10(kept[-1]) >= gap:
            kept.append(value)
    return kept


def sampled_weights(trials: pd.DataFrame, weight_key: str) -> list[float]:
    """The distinct non-zero weights of `weight_key` among the finished trials."""
    finished = _finished(trials)
    return sorted(float(w) for w in finished[weight_key].dropna().unique() if w > 0) if weight_key in finished else []


def combination_bars(trials: pd.DataFrame, metric: str) -> plt.Figure:
    """Bars per configuration (mean, error bar = std over seeds) with each seed as a dot."""
    data = _finished(trials).dropna(subset=[metric])
    order = configuration_order(data)
    figure, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(order) + 2), 3.8))
    sns.barplot(data=data, x="config", y=metric, order=order, errorbar="sd", capsize=0.2, ax=ax, color="#8fb3d9")
    sns.stripplot(data=data, x="config", y=metric, order=order, color="black", size=4, ax=ax)
    ax.set_xlabel("configuration")
    # the full name in the title: a long one as the y label is taller than the axes and gets clipped
    ax.set_ylabel(metric.rsplit("/", 1)[-1])
    ax.set_title(f"{metric}\nmean ± std over seeds; one dot per seed", fontsize="medium")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    figure.tight_layout()
    return figure


def learning_curves(history: pd.DataFrame, metrics: list[str], order: list[str] | None = None) -> plt.Figure:
    """One panel per metric: its value per epoch (1-based: a trial reports once per epoch) for each
    configuration, mean and 95% CI over seeds; the legend in `order` (configuration_order: baseline first,
    then by weight)."""
    from matplotlib.ticker import MaxNLocator

    data = history[history["metric"].isin(metrics)]
    present_configs = set(data["config"])
    hue_order = [c for c in (order or configuration_order_of(data)) if c in present_configs]
    figure, axes = _panels(len(metrics), width=6.0 if len(metrics) == 1 else 4.2, height=3.8)
    for ax, metric in zip(axes, metrics, strict=True):
        sns.lineplot(data=data[data["metric"] == metric], x="training_iteration", y="value", hue="config",
                     hue_order=hue_order, errorbar=("ci", 95), marker="o", ax=ax, legend=ax is axes[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
    axes[0].legend(title="configuration", fontsize="small")
    figure.tight_layout()
    return figure


def configuration_order_of(history: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(history.sort_values("config", key=lambda c: c != "baseline")["config"]))


# --------------------------------------------------------------------------- optuna


def optuna_history(study: optuna.Study) -> plt.Figure:
    # optuna's plots switch matplotlib to its own style globally: rc_context puts ours back after
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted: no "trial 0.5" tick
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (mean over seeds)")
    ax.figure.set_size_inches(6.0, 3.8)
    return ax.figure


def optuna_importances(study: optuna.Study) -> plt.Figure:
    """fANOVA importances of the searched parameters (optuna.importance.get_param_importances)."""
    importances = optuna.importance.get_param_importances(study)
    figure, ax = plt.subplots(figsize=(5.5, 0.5 * len(importances) + 1.8))
    sns.barplot(x=list(importances.values()), y=list(importances), ax=ax, color="#8fb3d9")
    ax.set_xlabel("importance for the objective (fANOVA)")
    ax.set_ylabel("parameter")
    ax.set_title("Parameter importances")
    figure.tight_layout()
    return figure


def optuna_parallel_coordinates(study: optuna.Study) -> plt.Figure:
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study)
    # Optuna colours lines with "Blues", whose low end is white on white: recolour with a full-range map
    for collection in ax.collections:
        if collection.get_array() is not None:
            collection.set_cmap("viridis")
    ax.figure.set_size_inches(8.0, 4.8)
    # room for the rotated axis names Optuna draws under the plot, which its own layout clips
    ax.figure.subplots_adjust(left=0.1, right=0.86, bottom=0.27, top=0.9)
    return ax.figure


# --------------------------------------------------------------------------- latent structure


def has_image_and_text_embeddings(path: Path) -> bool:
    """Whether an embeddings.npz holds both modalities (an image-only zero-shot set has no text)."""
    with np.load(path) as arrays:
        return len(arrays["image"]) > 0 and len(arrays["text"]) > 0


def embedding_pca(embeddings: dict[str, Path]) -> plt.Figure:
    """2-D PCA of image and text embeddings, one panel per model ({title: embeddings.npz}); each
    file must hold both modalities (`has_image_and_text_embeddings`)."""
    figure, axes = _panels(len(embeddings), width=4.6, height=4.2)
    for ax, (title, path) in zip(axes, embeddings.items(), strict=True):
        with np.load(path) as arrays:
            image, text = arrays["image"], arrays["text"]
        pca = PCA(n_components=2).fit(np.concatenate([image, text]))
        for name, features, marker in (("image", image, "o"), ("text", text, "^")):
            projected = pca.transform(features)
            ax.scatter(projected[:, 0], projected[:, 1], s=10, alpha=0.6, marker=marker, label=name)
        ratio = pca.explained_variance_ratio_
        ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
        ax.set_title(title)
        ax.legend(fontsize="small")
    figure.suptitle("Image and text embeddings, 2-D PCA (fit on both modalities)")
    figure.tight_layout()
    return figure


def info_gap_lines(trials: pd.DataFrame, metrics: list[str]) -> plt.Figure:
    """Each metric per setting (alignment pressure, and the regularizers beside it), one colour per
    information gap: mean and 95% CI over seeds."""
    data = _finished(trials).copy()
    data["info gap"] = data["data.info_gap"].map(lambda gap: f"{gap:g}")
    data["setting"] = data.apply(
        lambda row: f"align {row['regularizers.align']:g} " + regularizers_beside_align(row), axis=1)
    data["setting"] = data["setting"].str.replace(f" {NO_OTHER_REGULARIZER}", "", regex=False)
    order = (data.assign(regs=data.apply(regularizers_beside_align, axis=1) != NO_OTHER_REGULARIZER)
             .sort_values(["regs", "regularizers.align", "setting"])["setting"].unique().tolist())
    dodge = 0.4 if data["info gap"].nunique() > 1 else False
    figure, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        sns.pointplot(data=data.dropna(subset=[metric]), x="setting", y=metric, hue="info gap", order=order,
                      errorbar=("ci", 95), dodge=dodge, linestyle="none", capsize=0.1, ax=ax, legend=ax is axes[0])
        ax.set_xlabel("")
        ax.set_ylabel(metric)
        ax.tick_params(axis="x", labelrotation=30)
    figure.suptitle("Information gap: each metric per alignment pressure and regularizer (mean, 95% CI over seeds)")
    figure.tight_layout()
    return figure
