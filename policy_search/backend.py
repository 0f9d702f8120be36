"""What differs between the TensorFlow and the PyTorch search: the backend interface.

The search is one program (``policy_search.run``): the data, the search points and their
random streams, the augmentation, the policy logits and their per-layer Adam
(``policy_search.layers``), the checkpoints, the log and the policy file are shared, and a
backend supplies only the model, its pretraining step, the gradients and JVPs and the
devices. ``--backend tf`` (the default and the reference) is ``backend_tf.TFBackend``;
``--backend torch`` is ``backend_torch.TorchBackend``. Only the chosen one is imported: a
PyTorch search never loads TensorFlow, a TensorFlow search loads PyTorch only for the
batched augmentation.

A backend object, made once per process before any other work with its framework:

``name``, ``weights_suffix``
    "tf" / ".weights.h5" (Keras weights) or "torch" / ".pt" (a PyTorch ``state_dict``).
``replicas``, ``writes_results``, ``device``
    devices sharing the points of a step (the points must be a multiple of it), whether this
    process writes the results folder (one process per search does), and a description for
    the log.
``new_model(args, input_shape)``
    a fresh ``args.use_model`` seeded with ``args.seed`` (pretraining).
``trainer(model, args, total_steps)``
    the pretraining step (SPEC §2): called as ``(images, labels) -> (loss, correct)``;
    ``.state()`` gives (weights, optimiser variables), two lists of numpy arrays in a fixed
    order, for the pretraining checkpoint, and ``.load(weights, variables)`` restores them.
``save_weights(model, path)`` and ``search_model(args, input_shape, path)``
    atomic saving, and the search model restored from ``path`` with batch norm frozen
    (ValueError with one line when the file does not fit).
``predict(model, images)``
    logits (numpy) of normalised NHWC images in inference mode.
``matcher(model, args)``
    the gradient matcher: ``.replicas`` and ``.points(weights, labels, val, val_labels,
    dense, gtr, statistics) -> (cos [P], r [P, N])`` gathered in point order on every process
    (see ``layers.Searcher``).
``scalar_writer(folder)``
    ``.scalar(tag, value, step)`` and ``.close()`` for the search's tensorboard scalars.
``close()``
    leave the devices (the process group of a multi-process run).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

BACKENDS = ("tf", "torch")


def create(args):
    """The backend named by ``args.backend``, its devices set up."""
    if args.backend == "torch":
        from policy_search.backend_torch import TorchBackend

        return TorchBackend(args)
    with _stderr_held():
        from policy_search.backend_tf import TFBackend

    return TFBackend(args)


@contextlib.contextmanager
def _stderr_held():
    """TensorFlow's start-up lines (printed by its C++ code before its logging is set up,
    whatever TF_CPP_MIN_LOG_LEVEL says) kept off stderr, where they would bury a one-line
    error; they are shown if the import fails."""
    if "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
