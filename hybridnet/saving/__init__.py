"""Saving and loading models: versioned, checked, atomic files; names for custom objects.

Example:
    >>> model.save("digits.hnet")
    >>> restored = hybridnet.saving.load_model("digits.hnet")
    >>> @hybridnet.saving.register_serializable(package="my_project")
    ... def scaled_mse(y_true, y_pred): ...
"""
from hybridnet.saving.model_file import (FORMAT, VERSION, load_model, load_weights, save_model,
                                         save_weights)
from hybridnet.saving.registry import (CustomObjectScope, UnknownObjectError, custom_object_scope,
                                       get_custom_objects, get_registered_name,
                                       get_registered_object, register_serializable)

register_keras_serializable = register_serializable  # Keras's name, for ported code

__all__ = ["FORMAT", "VERSION", "CustomObjectScope", "UnknownObjectError", "custom_object_scope",
           "get_custom_objects", "get_registered_name", "get_registered_object", "load_model",
           "load_weights", "register_keras_serializable", "register_serializable", "save_model",
           "save_weights"]
