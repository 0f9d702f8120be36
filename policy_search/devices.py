"""Device strategy of the search (SPEC §2 "Devices").

The search points of one step are independent, so they are spread over replicas: every replica
computes the importances of its share of the points and the host gathers them. This module picks
the `tf.distribute.Strategy` that does the spreading.

One machine
    All visible GPUs are mirrored (`MirroredStrategy`). Without a GPU, ``cpu_replicas=N > 1``
    splits the CPU into N logical devices and mirrors over them (useful for tests and to check
    that results do not depend on the replica count); otherwise the default one-device strategy
    is used.

Several machines
    Set ``TF_CONFIG`` on every machine before starting the search, naming all workers and this
    machine's index, e.g. on the first of two machines::

        TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                    "task": {"type": "worker", "index": 0}}' python DeepAA_search.py ...

    and ``"index": 1`` on the second. Every worker runs the same command with the same seed, so
    every worker draws the same search points; each replica (on any worker) computes its share
    and the importances are all-gathered, so every worker applies the same policy update and
    keeps an identical copy of the policy. Worker 0 is the one that should write files.

`make_strategy` must be called before TensorFlow initialises its devices (before any tensor is
created): logical CPU devices and the multi-worker collective server can only be configured then.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf


def _tf_config_workers() -> list:
    """Worker addresses named by ``TF_CONFIG`` (empty when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return []
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    workers = config.get("cluster", {}).get("worker", [])
    if not isinstance(workers, list):
        raise ValueError("TF_CONFIG cluster.worker must be a list of host:port strings")
    return workers


def _split_cpu(n: int) -> list:
    """Configure ``n`` logical CPU devices and return their names."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is None or len(current) != n:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError:
            raise RuntimeError(
                f"cannot split the CPU into {n} replicas: TensorFlow devices are already "
                "initialised (call make_strategy first)") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:n]


def make_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Return the strategy the search runs under.

    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker; else
    ``MirroredStrategy`` over all visible GPUs; else, with ``cpu_replicas > 1``, a
    ``MirroredStrategy`` over that many logical CPU devices; else the default strategy.
    Build the model (and any optimiser) under ``strategy.scope()``.
    """
    if cpu_replicas < 0:
        raise ValueError(f"cpu_replicas must be >= 0, got {cpu_replicas}")
    if len(_tf_config_workers()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:  # share the card with the augmentation workers; harmless if too late
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        return tf.distribute.MirroredStrategy()
    if cpu_replicas > 1:
        return tf.distribute.MirroredStrategy(devices=_split_cpu(cpu_replicas))
    return tf.distribute.get_strategy()


def n_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas in sync over all workers: the number of points must be a multiple of it."""
    return int(strategy.num_replicas_in_sync)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that should write files: the chief where the cluster names one, else
    worker 0; always true on one machine (checkpoint.writes_results, the same rule read from
    TF_CONFIG before TensorFlow starts)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return True
    if spec.get("chief"):
        return resolver.task_type == "chief"
    return resolver.task_type is None or (
        resolver.task_type == "worker" and resolver.task_id == 0)
