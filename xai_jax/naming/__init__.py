"""Concept names: WordNet 3.0 through nltk (finding, installing, synsets, hypernyms)."""

from xai_jax.naming.wordnet import (concept_name, hypernym_path, load_wordnet, lowest_common_hypernym,
                                    setup_wordnet, synset, synset_from_wnid, wnid_of)

__all__ = ["concept_name", "hypernym_path", "load_wordnet", "lowest_common_hypernym", "setup_wordnet",
           "synset", "synset_from_wnid", "wnid_of"]
