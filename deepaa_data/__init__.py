"""Dataset readers shared by the search and the trainer (framework-free)."""
from .readers import (ArrayDataset, DatasetError, FileDataset, ImageDataset, dataset_classes,
                      load_dataset)

__all__ = ["ArrayDataset", "DatasetError", "FileDataset", "ImageDataset", "dataset_classes",
           "load_dataset"]
