"""Eq. 1–7 checked against hand computations."""

import pytest
import torch
from DualDSynthesisLib.model import losses
from torch.nn import functional as F


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so the penalty is (‖w‖ − 1)²·λ."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(*shape, generator=gen))
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True) + self.b


def test_gradient_penalty_equals_hand_value_for_a_linear_critic() -> None:
    critic = LinearCritic((1, 6, 5))
    real, fake = torch.rand(4, 1, 6, 5), torch.rand(4, 1, 6, 5)
    expected = 10.0 * (critic.w.detach().norm() - 1.0) ** 2
    got = losses.gradient_penalty(critic, real, fake, weight=10.0)
    assert torch.allclose(got, expected, rtol=1e-5)
    got.backward()  # the penalty reaches the critic's weights (double backward)
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_gradient_penalty_interpolates_between_real_and_fake() -> None:
    seen: list[torch.Tensor] = []

    def critic(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return (x**2).flatten(1).sum(1)

    real, fake = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    eps = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    gp = losses.gradient_penalty(critic, real, fake, weight=1.0, epsilon=eps)
    assert torch.allclose(seen[0][:, 0, 0, 0], torch.tensor([0.25, 0.75]))
    # grad of sum(x²) is 2x; ‖2·ε·1‖ over 9 pixels = 2·ε·3
    expected = ((torch.tensor([1.5, 4.5]) - 1) ** 2).mean()
    assert torch.allclose(gp, expected)


def test_critic_and_generator_global_terms() -> None:
    fake, real = torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0]])
    assert losses.critic_loss(fake, real).item() == pytest.approx(2.0 - 6.0)
    assert losses.generator_global_loss(fake).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_dense_bce_matches_torch_bce_on_sigmoid_outputs(target: float) -> None:
    logits = torch.randn(3, 1, 5, 4) * 3
    ref = F.binary_cross_entropy(torch.sigmoid(logits), torch.full_like(logits, target))
    assert torch.allclose(losses.dense_bce(logits, target), ref, atol=1e-6)


def test_attention_beta_zero_is_plain_l1() -> None:
    fake, real = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    m = torch.rand(2, 1, 2, 2)
    assert torch.allclose(losses.attention_loss(fake, real, m, beta=0.0), (fake - real).abs().mean())


def test_attention_weights_follow_confidence() -> None:
    size = (16, 16)
    assert torch.equal(losses.difficulty_weight(torch.zeros(1, 1, 2, 2), size, 2.0), torch.ones(1, 1, *size))
    near_one = losses.difficulty_weight(torch.full((1, 1, 2, 2), 0.999), size, 2.0)
    assert near_one.max() < 1e-5
    # M brought to the grid: bilinear, so an M map that is 0 on the left and 1 on the right gives weights
    # falling from left to right.
    m = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    w = losses.difficulty_weight(m, size, 1.0)
    assert w.shape == (1, 1, 16, 16) and w[0, 0, 0, 0] == 1 and w[0, 0, 0, -1] == 0
    assert torch.all(w[0, 0, 0, 1:] <= w[0, 0, 0, :-1])


def test_no_gradient_reaches_d2_through_the_attention_map() -> None:
    d2 = torch.nn.Conv2d(1, 1, 4, stride=4)
    fake = torch.rand(2, 1, 16, 16, requires_grad=True)
    real = torch.rand(2, 1, 16, 16)
    m = torch.sigmoid(d2(real))
    loss = losses.attention_loss(fake, real, m, beta=2.0)
    loss.backward()
    assert d2.weight.grad is None and fake.grad is not None


def test_reconstruction_p2_and_weight() -> None:
    fake, real = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert losses.reconstruction_loss(fake, real, p=2).item() == pytest.approx(30 / 4)
    w = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert losses.reconstruction_loss(fake, real, p=1, weight=w).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        losses.reconstruction_loss(fake, real, p=3)


def test_generator_total_weights_adversarial_terms() -> None:
    rec, a1, a2 = torch.tensor(1.0), torch.tensor(-4.0), torch.tensor(0.5)
    assert losses.generator_total(rec, a1, a2, 0.1, 2.0).item() == pytest.approx(1.0 - 0.4 + 1.0)
    assert losses.generator_total(rec, None, None, 0.1, 2.0).item() == pytest.approx(1.0)
