from pathlib import Path

import mlperf_logging
import pytest
import torch
import yaml

from mlperf_submission.closed.resnet.model import Bottleneck, ResNet50, mlperf_tensor_names

RULES = Path(mlperf_logging.__file__).parent / "compliance_checker/training_1.1.0/closed_resnet.yaml"


def rules_tensor_names() -> list[str]:
    """The 161 names in the END check of closed_resnet.yaml: `sorted(...) == sorted([...])`."""
    rules = yaml.safe_load(RULES.read_text())
    check = next(r["END"]["CHECK"] for r in rules if "END" in r)
    listed = check[check.index("sorted([") + len("sorted(") : check.rindex("])") + 1]
    return yaml.safe_load(listed)


@pytest.fixture(scope="module")
def full_model() -> ResNet50:
    torch.manual_seed(0)
    return ResNet50()


@pytest.fixture(scope="module")
def tiny_model() -> ResNet50:
    torch.manual_seed(0)
    return ResNet50(num_classes=10, width=8)


def test_full_model_parameter_count(full_model):
    assert sum(p.numel() for p in full_model.parameters()) == 25_557_032
    assert full_model.fc.in_features == 2048


def test_v1_5_stride_on_3x3_and_projection_shortcuts(full_model):
    stages = (full_model.layer1, full_model.layer2, full_model.layer3, full_model.layer4)
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    assert [stage[0].conv2.stride for stage in stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    for stage in stages:
        first = stage[0]
        assert first.conv1.stride == (1, 1) and first.conv3.stride == (1, 1)
        assert first.downsample is not None and first.downsample[0].kernel_size == (1, 1)
        assert first.conv2.stride == first.downsample[0].stride
        assert all(block.downsample is None for block in stage[1:])
    bns = [m for m in full_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.momentum == 0.1 and bn.eps == 1e-5 for bn in bns)


def test_forward_shape_tiny():
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_tensor_names_equal_rules_list(full_model):
    expected = rules_tensor_names()
    assert len(expected) == len(set(expected)) == 161
    mapping = mlperf_tensor_names(full_model)
    assert set(mapping) == {name for name, _ in full_model.named_parameters()}
    assert len(set(mapping.values())) == len(mapping) == 161  # each parameter has its own tensor name
    assert set(mapping.values()) == set(expected)
    assert mapping["conv1.weight"] == "conv0_weight"
    assert mapping["layer2.0.downsample.0.weight"] == "stage2_unit1_conv1sc_weight"
    assert mapping["layer4.2.bn3.bias"] == "stage4_unit3_bn3_beta"


def test_tiny_width_keeps_parameter_names(full_model, tiny_model):
    assert [n for n, _ in tiny_model.named_parameters()] == [n for n, _ in full_model.named_parameters()]
    assert mlperf_tensor_names(tiny_model) == mlperf_tensor_names(full_model)


def test_unknown_parameter_has_no_tensor_name(tiny_model):
    tiny_model.extra = torch.nn.Linear(2, 2)
    try:
        with pytest.raises(KeyError, match="extra.weight"):
            mlperf_tensor_names(tiny_model)
    finally:
        del tiny_model.extra


def test_initialisation_statistics(full_model):
    for m in full_model.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_in) ** 0.5  # Keras he_normal: the kept draws have this std
            assert m.bias is None
            assert m.weight.abs().max() <= 2 * std / 0.87962566103423978  # truncated at 2 of its std
            if m.weight.numel() >= 10_000:
                assert m.weight.std().item() == pytest.approx(std, rel=0.05)
                assert abs(m.weight.mean().item()) < 0.05 * std
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    for block in full_model.modules():
        if isinstance(block, Bottleneck):
            assert torch.equal(block.bn3.weight, torch.ones_like(block.bn3.weight))
    assert torch.equal(full_model.fc.bias, torch.zeros_like(full_model.fc.bias))
    assert full_model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_channels_last_matches_contiguous(tiny_model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model(x)
        cl_model = ResNet50(num_classes=10, width=8).to(memory_format=torch.channels_last).eval()
        cl_model.load_state_dict(tiny_model.state_dict())
        out = cl_model(x.to(memory_format=torch.channels_last))
    tiny_model.train()
    assert cl_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_autocast_bf16_forward_and_backward():
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
