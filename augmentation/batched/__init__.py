"""The batched engine: DeepAA's ops applied per sample to uint8 tensor batches N x 3 x H x W on
any torch device, each image with its own op, level, mirror sign and random parameters
(SPEC §1, §3), with the Pillow ops of ``augmentation.ops`` as the ground truth.

Public functions (the modules below say how):

* ``apply_policy_batch(policy, x)``: a whole policy, one candidate per image per layer;
* ``apply_candidate(x, name, level)``: one candidate on every image (the search's dense step);
* ``apply_ops(x, names, levels)``: op ``names[i]`` at ``levels[i]`` on image i;
* ``sample_candidates(policy, n)``: the candidate indices a policy batch draws;
* ``center_crop(x, size)``: ``ops.center_crop`` for a batch.

Modules: ``apply`` (the entry points and the choice of executor), ``draws`` (the random
draws), ``native`` with ``native.c`` / ``native_resize.c`` (the compiled CPU kernels), and the
torch executor: ``color``, ``lut``, ``geometry``, ``resize``, ``device`` (host-to-GPU copies).
Importing this package imports torch.
"""
from .apply import apply_candidate, apply_ops, apply_policy_batch
from .draws import sample_candidates
from .resize import center_crop

__all__ = ["apply_candidate", "apply_ops", "apply_policy_batch", "center_crop",
           "sample_candidates"]
