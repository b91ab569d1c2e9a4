"""Data sources, batching and the input adapters of fit/evaluate/predict."""
from hybridnet.data.adapters import (ArrayDataAdapter, DataAdapter, GeneratorDataAdapter,
                                     PyDatasetAdapter, get_data_adapter)
from hybridnet.data.prefetch import group_batches, prefetch_to_device
from hybridnet.data.py_dataset import PyDataset

__all__ = ["ArrayDataAdapter", "DataAdapter",
           "GeneratorDataAdapter", "PyDataset", "PyDatasetAdapter", "get_data_adapter",
           "group_batches", "prefetch_to_device"]
