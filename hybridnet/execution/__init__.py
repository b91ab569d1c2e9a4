"""Plan -> runners over one TrainState (the protocol is in ``execution/state.py``)."""
from hybridnet.execution.state import TrainState
from hybridnet.execution.steps import Executor, split_trainable

__all__ = ["Executor", "TrainState", "split_trainable"]
