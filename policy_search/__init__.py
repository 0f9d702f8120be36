"""The DeepAA policy search in TensorFlow (SPEC §2).

Submodules are imported on demand so that importing the package stays cheap: ``config``
(flags and presets), ``data`` (splits, search points, step batches), ``augment`` (the
augmentation executors), ``pretrain`` (the search model's pretraining and weights),
``importance`` (gradient matching), ``layers`` (policy logits and the per-step searcher),
``devices`` (distribution strategies), ``checkpoint`` (resumable runs) and ``run`` (the loop).
"""
