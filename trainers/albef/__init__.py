"""ALBEF (Li et al., NeurIPS 2021) ported to transformers 5, trained with the paper's regularizers."""

from trainers.albef.family import ALBEF_FAMILY

__all__ = ["ALBEF_FAMILY"]
