"""plasticrl.interventions.regularizers: the L2-to-init penalty, NaP's projection and the Anchors buffers, against
hand computations."""

import pytest
import torch
from torch import nn

from plasticrl.interventions.regularizers import Anchors, l2_init_penalty, project_to_norms, weight_norms


def test_l2_init_penalty_is_the_sum_of_squared_distances_with_gradient_twice_the_difference():
    w = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    b = torch.tensor([0.5, 3.0], requires_grad=True)
    w0 = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    b0 = torch.tensor([0.5, 1.0])
    penalty = l2_init_penalty([w, b], [w0, b0])
    # (1 + 4 + 1 + 0) + (0 + 4) = 10
    assert penalty.shape == () and float(penalty.detach()) == 10.0
    penalty.backward()
    assert torch.equal(w.grad, torch.tensor([[2.0, 4.0], [-2.0, 0.0]]))
    assert torch.equal(b.grad, torch.tensor([0.0, 4.0]))


def test_l2_init_penalty_is_zero_at_init_with_zero_gradient():
    w = torch.randn(3, 4, requires_grad=True)
    penalty = l2_init_penalty([w], [w.detach().clone()])
    penalty.backward()
    assert float(penalty.detach()) == 0.0 and torch.equal(w.grad, torch.zeros(3, 4))


def test_l2_init_penalty_refuses_mismatched_references():
    w = torch.zeros(3, 1)
    with pytest.raises(ValueError, match=r"tensor 0 has shape \(3, 1\), its reference \(3,\)"):
        l2_init_penalty([w], [torch.zeros(3)])  # would broadcast to (3, 3) silently
    with pytest.raises(ValueError, match="2 tensors but 1 references"):
        l2_init_penalty([w, w], [w])
    with pytest.raises(ValueError, match="no tensors given"):
        l2_init_penalty([], [])


def test_project_to_norms_rescales_each_tensor_in_place_to_its_target_norm():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    k = nn.Parameter(torch.full((2, 1, 2, 2), 0.5))  # 8 entries of 0.5: norm sqrt(2)
    zero = nn.Parameter(torch.zeros(2, 2))
    ptrs = [t.data_ptr() for t in (w, k, zero)]
    project_to_norms([w, k, zero], [torch.tensor(10.0), torch.tensor([1.0]), torch.tensor(3.0)])
    torch.testing.assert_close(w.data, torch.tensor([[6.0, 8.0]]))
    torch.testing.assert_close(k.data, torch.full((2, 1, 2, 2), 0.5 / 2 ** 0.5))
    assert torch.equal(zero.data, torch.zeros(2, 2))  # nothing to scale: stays zero, no NaN
    assert [t.data_ptr() for t in (w, k, zero)] == ptrs  # in place: the same storage


def test_project_to_norms_refuses_a_target_that_is_not_one_number():
    with pytest.raises(ValueError, match=r"reference 0 has shape \(2,\); a target norm is one number"):
        project_to_norms([torch.ones(2)], [torch.ones(2)])
    with pytest.raises(ValueError, match="1 tensors but 2 references"):
        project_to_norms([torch.ones(2)], [torch.ones(()), torch.ones(())])


def test_weight_norms_are_frobenius_norms():
    norms = weight_norms([torch.tensor([[3.0, 4.0]]), torch.ones(2, 2, 3, 3)])
    assert [float(n) for n in norms] == [5.0, 6.0]  # sqrt(36)
    assert all(n.shape == () and not n.requires_grad for n in norms)


def test_anchors_keep_copies_as_buffers_saved_and_loaded_with_their_module():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net.anchors = Anchors({name: p for name, p in net.named_parameters()})
    assert net.anchors.names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert list(net.state_dict())[-4:] == ["anchors.0__weight", "anchors.0__bias", "anchors.1__weight",
                                           "anchors.1__bias"]
    first = [t.clone() for t in net.anchors.tensors()]
    for t, p in zip(net.anchors.tensors(), net.parameters()):
        assert torch.equal(t, p) and t.data_ptr() != p.data_ptr()  # copies, not views
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert torch.equal(net.anchors.tensors()[0], first[0])  # training does not move the anchors
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    other.anchors = Anchors({name: torch.zeros_like(p) for name, p in other.named_parameters()})
    other.load_state_dict(net.state_dict())
    for t, ref in zip(other.anchors.tensors(), first):
        assert torch.equal(t, ref)
    assert sum(p.numel() for p in net.anchors.parameters()) == 0  # buffers: no optimizer sees them
