"""Demo recipes (issue 6): corpora from PyPI -> splits -> pre-train / fine-tune -> held-out scores.

`python -m recipes all` (or `make train-demo`) runs the whole demo; `run.py` has the steps,
`prepare.prepare` writes the data, `evaluate.evaluate` scores a model on held-out rows, and
`baselines` gives the reference points (unigram perplexity, samples, naive Bayes).
"""

from recipes.baselines import unigram_perplexity
from recipes.corpora import CorpusMissing
from recipes.evaluate import score_exact, score_label

__all__ = ["CorpusMissing", "score_exact", "score_label", "unigram_perplexity"]
