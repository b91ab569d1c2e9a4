"""Model files (kept for ``hybridnet.models.saving`` callers): see :mod:`hybridnet.saving`."""
from hybridnet.saving.model_file import (FORMAT, VERSION, load_model, load_weights, save_model,
                                         save_weights)

__all__ = ["FORMAT", "VERSION", "load_model", "load_weights", "save_model", "save_weights"]
