"""The one parse of model names that both CLIs and both model builders use."""
from networks import names


def test_wide_resnet_rule_depth_6n_plus_4_width_at_least_1():
    assert names.search_wrn("WRN_40_2") == (40, 2) and names.search_wrn("WRN_10_1") == (10, 1)
    assert names.train_wrn("wresnet28_10") == (28, 10)
    for bad in ("WRN_41_2", "WRN_4_2", "WRN_40_0", "WRN40_2", "wresnet40_2", "WRN_40_2x"):
        assert names.search_wrn(bad) is None, bad
    for bad in ("wresnet11_2", "wresnet28_0", "WRN_28_10", "vgg16"):
        assert names.train_wrn(bad) is None, bad
    assert names.is_search_model("resnet50") and names.is_train_model("resnet50")
    assert not names.is_search_model("wresnet28_10") and not names.is_train_model("WRN_28_10")


def test_importing_the_names_loads_no_framework():
    import subprocess
    import sys

    code = ("import sys, networks.names; "
            "print(any(m in sys.modules for m in ('torch', 'tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
