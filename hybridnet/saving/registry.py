"""Names for custom objects, so that saved files store names, never code.

After Keras 3's ``keras/src/saving/object_registration.py``: a class or function
decorated with :func:`register_serializable` is known under ``"package>name"``;
``load_model(..., custom_objects={name: obj})`` or a :func:`custom_object_scope`
supplies objects for one load. Nothing here imports a module named by a file.

Example:
    >>> @hybridnet.saving.register_serializable(package="my_project")
    ... def scaled_mse(y_true, y_pred):
    ...     return 2.0 * jnp.mean(jnp.square(y_pred - y_true), axis=-1)
    >>> hybridnet.saving.get_registered_name(scaled_mse)
    'my_project>scaled_mse'
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect

_GLOBAL_CUSTOM_OBJECTS: dict[str, object] = {}  # "package>name" -> class or function
_GLOBAL_CUSTOM_NAMES: dict[object, str] = {}  # class or function -> "package>name"
_SCOPE: contextvars.ContextVar = contextvars.ContextVar("hybridnet_custom_objects",
                                                        default=None)

HOW_TO_REGISTER = ("decorate it with @hybridnet.saving.register_serializable() (and import "
                   "the module that defines it before loading)")


class UnknownObjectError(ValueError):
    """A saved config names a class or function that is neither built in, registered,
    nor given in ``custom_objects``."""


def register_serializable(package: str = "Custom", name: str | None = None):
    """Registers a class or function under ``"package>name"`` for saving and loading.

    Classes must have ``get_config()`` (and ``from_config``, inherited from the
    hybridnet base classes). Works for layers, losses, metrics, optimizers,
    learning-rate schedules and plain loss/metric functions.

    Args:
        package: the first half of the registered name.
        name: the second half; defaults to the object's ``__name__``.

    Returns:
        A decorator that registers and returns its argument unchanged.

    Example:
        >>> @register_serializable("my_project")
        ... class Scale(hybridnet.layers.Layer): ...
        >>> get_registered_object("my_project>Scale") is Scale
        True
    """
    if not isinstance(package, str) or not package or ">" in package:
        raise ValueError("register_serializable: `package` must be a non-empty string without "
                         f"'>'. Received: package={package!r}")
    if name is not None and (not isinstance(name, str) or not name or ">" in name):
        raise ValueError("register_serializable: `name` must be None or a non-empty string "
                         f"without '>'. Received: name={name!r}")

    def decorator(arg):
        if inspect.isclass(arg):
            if not hasattr(arg, "get_config"):
                raise ValueError("Cannot register a class that does not have a get_config() "
                                 f"method. Received: {arg!r}")
        elif not callable(arg) or getattr(arg, "__name__", "<lambda>") == "<lambda>":
            raise ValueError("register_serializable registers classes and named functions. "
                             f"Received: {arg!r}")
        registered = f"{package}>{name if name is not None else arg.__name__}"
        _GLOBAL_CUSTOM_OBJECTS[registered] = arg
        _GLOBAL_CUSTOM_NAMES[arg] = registered
        return arg

    return decorator


def get_registered_name(obj) -> str:
    """The name ``obj`` is registered under, or its ``__name__`` if it is not registered."""
    return _registered(obj) or obj.__name__


def get_registered_object(name: str, custom_objects: dict | None = None,
                          module_objects: dict | None = None):
    """The class or function known as ``name``, or None.

    Looks in the active :func:`custom_object_scope`, then the registry, then
    ``custom_objects``, then ``module_objects`` (Keras's order).
    """
    scope = _SCOPE.get() or {}
    for table in (scope, _GLOBAL_CUSTOM_OBJECTS, custom_objects or {}, module_objects or {}):
        if name in table:
            return table[name]
    return None


def get_custom_objects() -> dict:
    """The live registry: ``"package>name"`` -> object."""
    return _GLOBAL_CUSTOM_OBJECTS


@contextlib.contextmanager
def custom_object_scope(custom_objects: dict | None):
    """Makes ``custom_objects`` (name -> class or function) visible to deserialization
    inside the ``with`` block (this thread or task only).

    Example:
        >>> with custom_object_scope({"scaled_mse": scaled_mse}):
        ...     model = hybridnet.models.load_model("m.hnet")
    """
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise ValueError("`custom_objects` must be a dict of name -> class or function. "
                         f"Received: custom_objects={custom_objects!r}")
    token = _SCOPE.set({**(_SCOPE.get() or {}), **(custom_objects or {})})
    try:
        yield
    finally:
        _SCOPE.reset(token)


CustomObjectScope = custom_object_scope


# ----------------------------------------------------------- used by serialize/deserialize

def _registered(obj) -> str | None:
    try:
        return _GLOBAL_CUSTOM_NAMES.get(obj)
    except TypeError:  # unhashable
        return None


def function_config(fn) -> dict | None:
    """``{"class_name": "function", "config": name, "registered_name": "pkg>name"}`` for a
    registered function, else None."""
    registered = None if inspect.isclass(fn) else _registered(fn)
    if registered is None:
        return None
    return {"class_name": "function", "config": fn.__name__, "registered_name": registered}


def object_config(obj) -> dict | None:
    """``{"class_name", "registered_name", "config"}`` for an instance of a registered
    class, else None. ``get_config()`` errors propagate."""
    registered = _registered(type(obj))
    if registered is None:
        return None
    return {"class_name": type(obj).__name__, "registered_name": registered,
            "config": obj.get_config()}


def by_name_config(obj) -> dict | None:
    """The config of an unregistered custom object, by its plain name (it loads only
    through ``custom_objects``), or None if it has no usable name or config."""
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        if obj.__name__ == "<lambda>":
            return None
        return {"class_name": "function", "config": obj.__name__, "registered_name": None}
    if inspect.isclass(obj) or not hasattr(obj, "get_config"):
        return None
    return {"class_name": type(obj).__name__, "registered_name": None,
            "config": obj.get_config()}


def describe(config) -> str:
    """A short human name for a saved entry: ``function 'f' (registered as 'pkg>f')``."""
    if not isinstance(config, dict):
        return repr(config)
    if "unsaveable" in config:
        return str(config["unsaveable"])
    class_name = config.get("class_name")
    name = config.get("config") if class_name == "function" else class_name
    text = f"function {name!r}" if class_name == "function" else f"class {name!r}"
    if config.get("registered_name"):
        text += f" (registered as {config['registered_name']!r})"
    return text


def resolve(config: dict, custom_objects: dict | None = None, *, what: str):
    """The class or function a saved ``{"class_name", "registered_name", "config"}`` entry
    names: by its registered name, then by its plain name (a function's name or the class
    name), in the active scope, the registry and ``custom_objects``. Never imports.

    Raises:
        UnknownObjectError: nothing is known under those names.
    """
    class_name = config.get("class_name")
    registered = config.get("registered_name")
    plain = config.get("config") if class_name == "function" else class_name
    names = [n for n in (registered, plain) if isinstance(n, str) and n]
    for name in names:
        found = get_registered_object(name, custom_objects)
        if found is not None:
            return found
    key = names[0] if names else class_name
    raise UnknownObjectError(
        f"Unknown {what}: {describe(config)} is not built in, registered or given in "
        f"custom_objects. Pass custom_objects={{{key!r}: ...}} to load_model, or "
        f"{HOW_TO_REGISTER}. Nothing is imported from a saved file.")


def resolve_custom(config: dict, custom_objects: dict | None, base: type, what: str):
    """A saved custom ``{"class_name", "config", ...}`` entry as a function (class_name
    "function") or as an instance of a ``base`` subclass built ``from_config``."""
    found = resolve(config, custom_objects, what=what.lower())
    if config.get("class_name") == "function":
        if isinstance(found, type) or not callable(found):
            raise ValueError(f"{what} {describe(config)} resolved to {found!r}, which is not "
                             f"a function.")
        return found
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(f"{what} {describe(config)} resolved to {found!r}, which is not a "
                         f"{base.__module__}.{base.__name__} subclass.")
    return found.from_config(dict(config.get("config") or {}))


def find_class(class_name: str, base: type):
    """The one registered subclass of ``base`` whose ``__name__`` is ``class_name``."""
    found = {obj for obj in list(_GLOBAL_CUSTOM_OBJECTS.values()) + list(
        (_SCOPE.get() or {}).values())
             if inspect.isclass(obj) and issubclass(obj, base) and obj.__name__ == class_name}
    return found.pop() if len(found) == 1 else None
