"""The PyTorch trainer that evaluates DeepAA policies (SPEC §3): ``python -m
DeepAA_evaluate.train``. Importing this package loads neither torch nor TensorFlow."""
