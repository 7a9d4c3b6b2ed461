"""Training and reference data: single-system datasets and multi-sequence corpora."""

from __future__ import annotations

from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.datasets import Dataset, load_dataset
from arbg.data.loaders import Corpus, load_corpus, load_many_peptides, load_many_peptides_eval

__all__ = [
    "Corpus",
    "CorpusConfig",
    "Dataset",
    "load_corpus",
    "load_dataset",
    "load_many_peptides",
    "load_many_peptides_eval",
    "run_corpus",
]
