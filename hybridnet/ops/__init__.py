"""``hybridnet.ops``: the ``keras.ops`` API on JAX.

As in Keras, every op is available at the top level (``ops.matmul``, ``ops.relu``) and in
its namespace (``ops.numpy``, ``ops.nn``, ``ops.math``, ``ops.core``, ``ops.linalg``,
``ops.image``). Inputs may be NumPy or JAX arrays, Python scalars and lists, or objects
implementing ``__jax_array__``; results are JAX arrays, and every op can be used under
``jit``, ``grad`` and ``vmap``.

Example:
    >>> from hybridnet import ops
    >>> ops.softmax(ops.matmul(ops.ones((2, 3)), ops.ones((3, 4))), axis=-1).shape
    (2, 4)
"""
from hybridnet.ops import core, image, linalg, math, nn, numpy
from hybridnet.ops.numpy import *  # noqa: F401,F403
from hybridnet.ops.math import *  # noqa: F401,F403
from hybridnet.ops.linalg import *  # noqa: F401,F403
from hybridnet.ops.nn import *  # noqa: F401,F403
from hybridnet.ops.core import *  # noqa: F401,F403
from hybridnet.ops.numpy import tanh  # noqa: F401  (keras.ops.tanh is the NumPy one)

__all__ = sorted(set(numpy.__all__) | set(math.__all__) | set(linalg.__all__) | set(nn.__all__)
                 | set(core.__all__)) + ["core", "image", "linalg", "math", "nn", "numpy"]
