"""Downstream evaluation: metric functions on features (`metrics`), the suite every family runs (`suite`)
and the metric names it emits (`names`). This package imports nothing itself, so that `names` stays light
for study validation and the report."""
