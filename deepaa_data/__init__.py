"""Dataset readers shared by the search and the trainer (framework-free)."""
from .readers import (ArrayDataset, DatasetError, FileDataset, ImageDataset, dataset_classes,
                      has_split, load_dataset, read_image)

__all__ = ["ArrayDataset", "DatasetError", "FileDataset", "ImageDataset", "dataset_classes",
           "has_split", "load_dataset", "read_image"]
