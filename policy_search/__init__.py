"""The DeepAA policy search (SPEC §2), in TensorFlow (the reference) or PyTorch.

Submodules are imported on demand so that importing the package stays cheap and loads no
framework. Shared by both backends: ``config`` (flags and presets), ``data`` (splits, search
points, step batches), ``augment`` (the augmentation executors), ``pretrain`` (the pretraining
loop and the weights' provenance), ``layers`` (policy logits with their Adam, and the per-step
searcher), ``checkpoint`` (resumable runs) and ``run`` (the loop). ``backend`` describes what a
backend supplies: ``backend_tf`` with ``importance`` (gradient matching) and ``devices``
(distribution strategies) for TensorFlow, ``backend_torch`` with ``torch_importance`` for
PyTorch.
"""
