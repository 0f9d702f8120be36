"""Models for both frameworks, under the same names.

``networks.tf_models`` holds the Keras models of the policy search (TensorFlow) and
``networks.torch_models`` the PyTorch models of the trainer. This package file imports
neither, so loading one framework's models never loads the other framework.
"""
