"""The DeepAA policy search in TensorFlow (SPEC §2).

Submodules are imported on demand so that importing the package stays cheap:
``devices`` (distribution strategies), ``importance`` (gradient matching),
``layers`` (policy logits and the per-step searcher).
"""
