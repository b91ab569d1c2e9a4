"""Data sources, batching and the input adapters of fit/evaluate/predict."""
from hybridnet.data.adapter import ArrayData, IterableData
