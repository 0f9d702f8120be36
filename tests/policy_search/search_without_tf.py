"""DeepAA_search.py FLAGS, then a check that the process never imported TensorFlow or Keras
(exit 3 naming the module if it did), for the PyTorch search's tests:

    python search_without_tf.py FLAGS...
    python -m torch.distributed.run --nproc_per_node 2 search_without_tf.py FLAGS...
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> int:
    import DeepAA_search

    code = DeepAA_search.main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    if loaded:
        sys.stderr.write(f"search_without_tf.py: the search imported {loaded[0]}\n")
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
