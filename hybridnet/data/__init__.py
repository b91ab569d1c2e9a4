"""Data sources, batching and the input adapters of fit/evaluate/predict."""
from hybridnet.data.adapters import (ArrayDataAdapter, DataAdapter, GeneratorDataAdapter,
                                     PyDatasetAdapter, get_data_adapter)
from hybridnet.data.prefetch import group_batches, prefetch_to_device
from hybridnet.data.py_dataset import PyDataset

# The image pipeline imports grain (and Pillow): loaded on first use.
_IMAGES = ("ImagePipeline", "ImagePipelineAdapter", "image_folder", "array_source",
           "make_synthetic_image_folder")

__all__ = ["ArrayDataAdapter", "DataAdapter",
           "GeneratorDataAdapter", "PyDataset", "PyDatasetAdapter", "get_data_adapter",
           "group_batches", "prefetch_to_device", *_IMAGES]


def __getattr__(name):
    if name in _IMAGES or name == "images":
        import importlib
        images = importlib.import_module("hybridnet.data.images")
        return images if name == "images" else getattr(images, name)
    raise AttributeError(f"module 'hybridnet.data' has no attribute {name!r}")
