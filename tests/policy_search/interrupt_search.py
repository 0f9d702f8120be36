"""DeepAA_search.py with a Ctrl-C (KeyboardInterrupt) raised at a chosen moment, for the
resume tests:

    python interrupt_search.py between|inside|nan N FLAGS...

``between``: at the N-th StepBuilder.finish call, before that step has touched the policy.
``inside``: in the N-th search step, after its Adam update has been applied.
``nan``: the N-th search step finds importances that are not finite (FloatingPointError).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> int:
    where, at, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import torch  # noqa: F401  (before TensorFlow, as DeepAA_search.py does)
    import torch._dynamo  # noqa: F401

    from policy_search import data, layers

    calls = [0]

    def interrupting(fn, before, error=KeyboardInterrupt):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if before and calls[0] == at:
                raise error("importances contain NaN or infinity") \
                    if error is FloatingPointError else error
            out = fn(*args, **kwargs)
            if not before and calls[0] == at:
                raise KeyboardInterrupt
            return out
        return wrapped

    if where == "between":
        data.StepBuilder.finish = interrupting(data.StepBuilder.finish, before=True)
    elif where == "nan":
        for name in ("stage1_step", "stagek_step"):
            setattr(layers.Searcher, name, interrupting(getattr(layers.Searcher, name), True,
                                                        FloatingPointError))
    else:
        for name in ("stage1_step", "stagek_step"):
            setattr(layers.Searcher, name, interrupting(getattr(layers.Searcher, name), False))
    import DeepAA_search

    return DeepAA_search.main(flags)


if __name__ == "__main__":
    sys.exit(main())
