"""Shared test setup.

torch (and its compiler stack, which loads triton) must be imported before TensorFlow in a
process that uses both: the reverse order crashes the interpreter. Importing them here, first,
fixes the order for the whole suite.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401
