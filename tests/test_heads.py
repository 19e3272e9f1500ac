"""DINOHead: released key layout, fixed weight-norm magnitude, and equality with torch's weight norm."""

import torch
from torch import nn

from dinolab.pretrain.train.heads import DINOHead


def test_state_dict_keys_and_shapes_match_released_layout():
    head = DINOHead(in_dim=32, out_dim=50, hidden_dim=24, bottleneck_dim=8)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (24, 32), "mlp.0.bias": (24,),
        "mlp.2.weight": (24, 24), "mlp.2.bias": (24,),
        "mlp.4.weight": (8, 24), "mlp.4.bias": (8,),
        "last_layer.weight_g": (50, 1), "last_layer.weight_v": (50, 8),
    }
    assert torch.all(head.state_dict()["last_layer.weight_g"] == 1)


def test_single_layer_head_is_one_linear():
    head = DINOHead(in_dim=16, out_dim=10, bottleneck_dim=4, nlayers=1)
    assert isinstance(head.mlp, nn.Linear)
    assert set(head.state_dict()) == {"mlp.weight", "mlp.bias", "last_layer.weight_g", "last_layer.weight_v"}


def test_weight_g_is_not_trained_and_last_layer_parameters():
    head = DINOHead(in_dim=16, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    names = [n for n, _ in head.named_parameters()]
    assert "last_layer.weight_g" not in names
    assert head.last_layer_parameters() == [head.last_layer.weight_v]
    biases = [p for n, p in head.named_parameters() if n.endswith("bias")]
    assert all(torch.all(b == 0) for b in biases)
    assert 0.01 < head.mlp[0].weight.std().item() < 0.03  # trunc_normal(0.02)


def test_forward_equals_cosine_to_prototypes_and_torch_weight_norm():
    torch.manual_seed(1)
    head = DINOHead(in_dim=16, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    x = torch.randn(2, 3, 16)
    logits = head(x)
    assert logits.shape == (2, 3, 10)
    # Hand computation: MLP, normalise, cosine with each normalised prototype row.
    z = head.mlp(x)
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.last_layer.weight_v.detach()
    expected = z @ (v / v.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    # Independent implementation: torch's weight_norm parametrisation with g = 1.
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(4, 10, bias=False), dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.fill_(1.0)
        reference.parametrizations.weight.original1.copy_(v)
    torch.testing.assert_close(head.last_layer(z), reference(z), rtol=1e-5, atol=1e-6)
    assert torch.all(logits.abs() <= 1 + 1e-5)


def test_loads_a_state_dict_with_released_keys_strictly():
    source = DINOHead(in_dim=16, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    target = DINOHead(in_dim=16, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(4, 16)
    torch.testing.assert_close(target(x), source(x))
