"""Ready-made models written with the functional API (``hybridnet.applications.gnmt``)."""
from hybridnet.applications.gnmt import (BahdanauAttention, LabelSmoothedCrossentropy,
                                         beam_search, gnmt, greedy_decode, model_weights,
                                         parameter_count)

__all__ = ["BahdanauAttention", "LabelSmoothedCrossentropy", "beam_search", "gnmt",
           "greedy_decode", "model_weights", "parameter_count"]
