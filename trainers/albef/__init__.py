"""ALBEF (Li et al., NeurIPS 2021) ported to transformers 5, trained with the paper's regularizers.

The family is `trainers.albef.family.ALBEF_FAMILY`; this package imports nothing itself, so that
`trainers.albef.names` stays light for study validation and the report."""
