"""Models: functional ``Model``, ``Sequential``, saving and loading."""
from hybridnet.models.model import Model
from hybridnet.models.saving import load_model
from hybridnet.models.sequential import Sequential

__all__ = ["Model", "Sequential", "load_model"]
