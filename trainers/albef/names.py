"""The metric names ALBEF's evaluation (`family.py`) emits beyond the two-tower suite's.

Declared here, free of heavy imports, so that study validation (`trainers.study_spec`) and the report
(`analysis.metrics`) read them without loading torch or transformers; tests/test_metric_names.py checks
`family.evaluate` emits exactly these. ALBEF's retrieval (ITC shortlist, ITM rerank) emits the suite's
retrieval names (`trainers.evaluate.names`).
"""

from __future__ import annotations

from trainers.evaluate.names import MetricNames

# The fused heads, each beside its text-only control (the same head fine-tuned and tested with every image
# another example's), the margin between the two, which is what the image adds, and the margin's standard error
# over the held-out examples (paired: both heads answer the same texts).
FUSED_HEADS = ("vqa", "nlvr", "ve")
HEAD_METRIC_NAMES = ("accuracy", "text_only_accuracy", "image_margin", "image_margin_se")
FUSED_HEAD_METRICS: dict[str, MetricNames] = {
    head: MetricNames(exact=tuple(f"{head}/{name}" for name in HEAD_METRIC_NAMES)) for head in FUSED_HEADS
}

# Pre-training's end state, reported by every evaluation (no task asks for it): running ITC beside its chance
# value ln(B + Q), ITM accuracy beside its 2/3 prior, the online-momentum cosine, and albef/trained (1/0).
TRAINED_FLAG = "albef/trained"
PRETRAINING_METRICS = MetricNames(exact=(
    "albef/itc_loss", "albef/itc_chance", "albef/itm_accuracy", "albef/itm_prior_accuracy",
    "albef/momentum_cosine", TRAINED_FLAG,
))
