"""Plan -> compiled step functions."""
from hybridnet.execution.steps import Executor, LossContainer, MetricsContainer, split_trainable
