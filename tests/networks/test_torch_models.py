"""PyTorch models: Wide ResNet sizes and shapes, ResNet-50 from torchvision."""
import pytest
import torch

from networks.torch_models import batchnorm_parameters, get_model, is_model_name


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, millions", [("wresnet28_10", 36.48), ("wresnet40_2", 2.24)])
def test_wide_resnet_parameter_counts(name, millions):
    # The published sizes of WRN-28-10 (36.5M) and WRN-40-2 (2.2M) on 10 classes.
    assert _n_params(get_model(name, 10)) / 1e6 == pytest.approx(millions, abs=0.02)


def test_wide_resnet_forward_shapes_and_structure():
    torch.manual_seed(0)
    model = get_model("wresnet10_2", 7).eval()
    for size in (16, 32):
        assert model(torch.randn(3, 3, size, size)).shape == (3, 7)
    assert model.layer1[0].conv1.out_channels == 32 and model.layer3[0].conv2.stride == (2, 2)
    assert len(model.layer1) == 1 and model.layer1[0].bn1.momentum == 0.1
    bn = batchnorm_parameters(model)
    assert len(bn) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_resnet50_is_torchvisions():
    import torchvision

    torch.manual_seed(0)  # the init std below is a sample statistic
    model = get_model("resnet50", 1000)
    assert isinstance(model, torchvision.models.ResNet)
    assert _n_params(model) == 25_557_032
    # The released ResNet-50's initialisation: every BN (the blocks' last included) at 1 / 0,
    # bias-free convolutions from N(0, 2 / (k * k * out_channels)).
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    conv = model.layer3[0].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.bias is None
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)


def test_unknown_models_are_rejected():
    assert is_model_name("wresnet16_4") and not is_model_name("vgg16")
    with pytest.raises(ValueError, match="vgg16"):
        get_model("vgg16", 10)
    with pytest.raises(ValueError, match="6n"):
        get_model("wresnet12_1", 10)


def test_search_models_are_the_keras_search_models():
    """search_model: the Keras search WRN's structure (ε 1e-3, TensorFlow's "same" padding on
    the strided convolutions, same parameter count), Keras' initialisation, and the weights
    the Keras models put an L2 penalty on."""
    from networks.names import RESNET50_L2, WRN_L2
    from networks.torch_models import same_padding, search_l2, search_model

    torch.manual_seed(0)
    model = search_model("WRN_40_2", 10)
    assert _n_params(model) == pytest.approx(2.24e6, abs=0.02e6)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 for m in bns)
    strided = [m for m in model.modules() if getattr(m, "same_pad", False)]
    assert len(strided) == 2 and all(m.conv2.padding == (0, 0) for m in strided)
    assert same_padding((32, 32), 3, 2) == (0, 1, 0, 1)
    assert same_padding((9, 8), 3, 2) == (0, 1, 1, 1) and same_padding((8, 8), 3, 1) == (1, 1, 1, 1)
    conv = model.layer2[1].conv1
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.03)
    assert conv.weight.abs().max().item() <= 2 * (2 / fan_in) ** 0.5 / 0.8796 + 1e-6
    assert torch.all(conv.bias == 0) and torch.all(model.linear.bias == 0)
    bound = (6 / (128 + 10)) ** 0.5  # Glorot uniform
    assert model.linear.weight.abs().max().item() <= bound
    assert model.linear.weight.abs().max().item() > 0.9 * bound
    coef, params = search_l2("WRN_40_2", model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert coef == WRN_L2 and len(params) == 2 * len(convs) + 1
    assert not any(p is model.linear.bias for p in params)
    resnet = search_model("resnet50", 7)
    coef, params = search_l2("resnet50", resnet)
    assert coef == RESNET50_L2 and len(params) == 53 + 2
    assert torch.all(resnet.layer1[0].bn3.weight == 0)  # the Keras ResNet's zero init
    with pytest.raises(ValueError, match="WRN_<depth>_<width>"):
        search_model("wresnet40_2", 10)
