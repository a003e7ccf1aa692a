"""The metric names the two-tower suite (`suite.py`) emits, per evaluation task.

Declared here, beside the suite and free of heavy imports, so that study validation (`trainers.study_spec`) and the
report (`analysis.metrics`) read them without loading torch; tests/test_metric_names.py runs a real
evaluation and checks the suite emits exactly what is declared. Every name is also emitted on validation
data as `val/<name>` when the task sets carry it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricNames:
    """The names one evaluation task emits: fixed names, and patterns (regex, description) for names that
    depend on the data or the configuration (zero-shot sets, probes, K)."""

    exact: tuple[str, ...] = ()
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()

    def declares(self, name: str) -> bool:
        return name in self.exact or any(pattern.fullmatch(name) for pattern, _ in self.patterns)

    def described(self) -> list[str]:
        """Exact names, then each pattern's description: what a message lists as allowed."""
        return [*self.exact, *(description for _, description in self.patterns)]


VALIDATION_PREFIX = "val/"  # the prefix of every metric measured on validation data


PROBE_FEATURES = (
    "image", "text", "image_independent", "text_independent",
    "image_concat", "text_concat", "image_pooled", "text_pooled",
)

# Zero-shot is per set only: sets differ in difficulty and chance level, so a mean across them would
# hide which one moved.
TWO_TOWER_METRICS: dict[str, MetricNames] = {
    "zeroshot": MetricNames(patterns=(
        (re.compile(r"zeroshot/[A-Za-z0-9_.-]+/top[135]"), "zeroshot/<set>/top{1,3,5}"),
    )),
    "retrieval": MetricNames(exact=(
        *(f"retrieval/{direction}_r{k}" for direction in ("i2t", "t2i") for k in (1, 5, 10)),
        "retrieval/mean_recall",
    )),
    # linear_probe/top1: the image embedding on the shared-class probe
    "linear_probe": MetricNames(exact=("linear_probe/top1",), patterns=(
        (re.compile(rf"linear_probe/[A-Za-z0-9_]+/({'|'.join(PROBE_FEATURES)})"),
         f"linear_probe/<target>/<{'|'.join(PROBE_FEATURES)}>"),
    )),
    "kshot": MetricNames(patterns=((re.compile(r"kshot/k[0-9]+"), "kshot/k<K> for K in base.eval.kshot"),)),
    "structure": MetricNames(exact=(
        "structure/modality_gap", "structure/alignment", "structure/uniformity", "structure/pair_cosine",
    )),
}
