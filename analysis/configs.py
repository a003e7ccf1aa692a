"""Human labels for configurations ("baseline", "+GC", "+DFS+BB", "GC=0.31"), derived from weights.

A configuration is one combination of the searched parameters (seeds aside). Its label names the
active regularizers in the paper's order (DFS, BB, GC, then the alignment pressure). A regularizer
that is on at a single weight throughout the study is written "+GC"; one searched over several
weights is written with its weight, "GC=0.31". A regularizer's own option (`regularizers.bb_s`, any
`regularizers.<name>_...`) means nothing while its weight is 0: it joins the label of the configurations
that use it, "BB=0.19 (bb_s=0.62)", when it takes more than one value there. Other searched parameters
that vary (the info gap, a learning rate) form the configuration's *context*, and Δ compares within a
context.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REGULARIZER_KEYS = ("regularizers.dfs", "regularizers.bb", "regularizers.gc", "regularizers.align")
REGULARIZER_NAMES = {"regularizers.dfs": "DFS", "regularizers.bb": "BB", "regularizers.gc": "GC",
                     "regularizers.align": "align"}
BASELINE = "baseline"
# Options that change what a regularizer is, so that two arms with the same weight stay apart:
# (weight key, option key, the option's non-default value, what the label adds).
REGULARIZER_OPTIONS = (
    ("regularizers.dfs", "regularizers.dfs_separation", False, " w/o separation"),
    ("regularizers.gc", "regularizers.gc_normalization", "per_pair", " per pair"),
)


def regularizer_name(key: str, row: dict) -> str:
    """'DFS', or 'DFS w/o separation' when the row sets an option that changes the regularizer."""
    name = REGULARIZER_NAMES[key]
    for weight_key, option, value, words in REGULARIZER_OPTIONS:
        if key == weight_key and option in row and _is(row[option], value):
            name += words
    return name


NO_OTHER_REGULARIZER = "none"


def regularizers_beside_align(row: dict) -> str:
    """The regularizers on beside the alignment pressure, in the paper's order ("+GC", "+DFS+GC"), or "none":
    what tells the information-gap study's settings at one alignment pressure apart."""
    active = [regularizer_name(key, row) for key in REGULARIZER_KEYS
              if key != "regularizers.align" and (row.get(key) or 0) > 0]
    return "+" + "+".join(active) if active else NO_OTHER_REGULARIZER


def _is(found: object, value: object) -> bool:
    if isinstance(value, bool):
        return isinstance(found, bool | np.bool_) and bool(found) == value
    return found == value


def _weight(value: object) -> float:
    return float(value) if isinstance(value, int | float) and pd.notna(value) else 0.0


def option_owner(key: str) -> str | None:
    """The weight key of the regularizer that an option belongs to (regularizers.bb_s -> regularizers.bb)."""
    return next((weight_key for weight_key in REGULARIZER_KEYS if key.startswith(f"{weight_key}_")), None)


def _varying_options(trials: pd.DataFrame, searched_keys: list[str], worded: set[str]) -> dict[str, list[str]]:
    """Weight key -> its searched options that take more than one value where that regularizer is on."""
    shown: dict[str, list[str]] = {}
    for key in searched_keys:
        owner = option_owner(key)
        if owner is None or key in worded or key not in trials or owner not in trials:
            continue
        on = trials[[_weight(value) > 0 for value in trials[owner]]]
        if on[key].astype(str).nunique() > 1:
            shown.setdefault(owner, []).append(key)
    return shown


def _key_value_text(key: str, value: object) -> str:
    """'bb_s=0.617': the key's last part and its value; an unset (None) option is 'default'."""
    name = key.split(".")[-1]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return f"{name}=default"
    return f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"


def _multi_weight_keys(trials: pd.DataFrame) -> set[str]:
    multi = set()
    for key in REGULARIZER_KEYS:
        if key in trials:
            nonzero = {_weight(value) for value in trials[key]} - {0.0}
            if len(nonzero) > 1:
                multi.add(key)
    return multi


def regularizer_label(weights: dict[str, object], multi_weight: set[str],
                      shown_options: dict[str, list[str]] | None = None) -> str:
    """'baseline' when every weight is zero, else '+DFS+GC' / 'GC=0.31' / 'BB=0.19 (bb_s=0.62)' style."""
    parts = []
    for key in REGULARIZER_KEYS:
        weight = _weight(weights.get(key))
        if weight == 0.0:
            continue
        name = regularizer_name(key, weights)
        part = f"{name}={weight:.3g}" if key in multi_weight else f"+{name}"
        options = (shown_options or {}).get(key, [])
        if options:
            part += " (" + ", ".join(_key_value_text(option, weights.get(option)) for option in options) + ")"
        parts.append(part)
    if not parts:
        return BASELINE
    # weighted parts read better separated: "DFS=0.1, GC=0.3" rather than "+DFS=0.1GC=0.3"
    return "".join(parts) if all(part.startswith("+") for part in parts) else ", ".join(parts)


def _context_label(row: dict, context_keys: list[str]) -> str:
    return ", ".join(_key_value_text(key, row[key]) for key in context_keys)


def label_configurations(trials: pd.DataFrame, searched_keys: list[str]) -> pd.DataFrame:
    """Add columns regularizer_label, context, config (the full label) and is_baseline."""
    trials = trials.copy()
    multi = _multi_weight_keys(trials)
    worded = {option for _, option, _, _ in REGULARIZER_OPTIONS}
    shown_options = _varying_options(trials, searched_keys, worded)
    context_keys = [key for key in searched_keys if key not in REGULARIZER_KEYS and option_owner(key) is None
                    and key in trials and trials[key].nunique(dropna=False) > 1]
    records = trials.to_dict("records")
    trials["regularizer_label"] = [regularizer_label(row, multi, shown_options) for row in records]
    trials["context"] = [_context_label(row, context_keys) for row in records]
    trials["is_baseline"] = trials["regularizer_label"] == BASELINE
    labels = zip(trials["regularizer_label"], trials["context"], strict=True)
    trials["config"] = [label if not context else f"{label} ({context})" for label, context in labels]
    trials.attrs["context_keys"] = context_keys
    return trials


def configuration_order(trials: pd.DataFrame) -> list[str]:
    """Configurations in reading order: per context, baseline first, then fewer regularizers, then weight."""
    def sort_key(row: dict) -> tuple:
        weights = [_weight(row.get(key)) for key in REGULARIZER_KEYS]
        active = [weight > 0 for weight in weights]
        return (row["context"], sum(active), [not flag for flag in active], weights)

    first_rows = trials.drop_duplicates("config").to_dict("records")
    return [row["config"] for row in sorted(first_rows, key=sort_key)]


def with_batch_size(label: str, batch_size: int | None) -> str:
    """A configuration label with the batch size its weights were used at: L_GC sums N^2 pairs over N,
    so a GC weight means something only beside its batch size (see docs/)."""
    if batch_size is None or label == BASELINE or label.startswith(f"{BASELINE} "):
        return label
    return f"{label} [batch {batch_size}]"
