"""The black-box substitute: Jacobian augmentation against a hand computation, the oracle's labels,
the rounds' doubling, determinism and the cache."""
import pytest
import torch
from torch import nn

from nbutils import blackbox
from nbutils.models import Classifier
from conftest import linear_classifier


def trainable_linear(seed=0):
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), [0.0], [1.0], name="sub", weights_id="init",
                      class_names=list("abcd"), resize=None, crop=None)


class ConstantOracle(nn.Module):
    """A black box that answers class ``answer`` for every image."""

    def __init__(self, answer: int):
        super().__init__()
        self.answer = answer
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot(torch.full((x.shape[0],), self.answer), 4).float() + 0 * self.dummy


def test_jacobian_augmentation_steps_along_the_sign_of_the_label_probability_gradient_unclipped():
    model = linear_classifier()
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = []
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        model(xi).softmax(1)[0, y[i]].backward()
        expected.append(x[i] + 0.5 * xi.grad[0].sign())
    new = blackbox.jacobian_augmentation(model, x, y, 0.5)
    torch.testing.assert_close(new, torch.stack(expected))
    assert new.min() < 0 or new.max() > 1  # a step of 0.5 from [0, 1] leaves it: the source does not clip


def test_the_oracle_labels_the_new_half_and_the_set_doubles_each_round():
    substitute, x = trainable_linear(), torch.rand(8, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    history = blackbox.train_substitute(substitute, ConstantOracle(2), x, y, x, y, rounds=4, epochs=30, lr=0.05)
    assert history.to_frame()["n_images"].tolist() == [8, 16, 32, 64]
    # 56 of the last round's 64 labels came from the oracle (class 2): the substitute learnt them
    assert (blackbox.oracle_labels(substitute, x + 0.3 * torch.randn_like(x)) == 2).float().mean() > 0.5
    assert history.rows[-1]["agreement"] == pytest.approx((blackbox.oracle_labels(substitute, x) == 2).float().mean().item())


def test_substitute_training_is_seeded_and_cached(tmp_path):
    x, y = torch.rand(8, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    oracle = linear_classifier(seed=3)
    runs = []
    for _ in range(2):
        substitute = trainable_linear()
        history = blackbox.train_substitute(substitute, oracle, x, y, x, y, rounds=2, epochs=2, cache_dir=tmp_path)
        runs.append((substitute.state_dict(), history))
    assert not runs[0][1].from_cache and runs[1][1].from_cache
    for key, value in runs[0][0].items():
        assert torch.equal(value, runs[1][0][key])
    again = trainable_linear()
    blackbox.train_substitute(again, oracle, x, y, x, y, rounds=2, epochs=2)
    for key, value in runs[0][0].items():
        assert torch.equal(value, again.state_dict()[key])


def test_bad_substitute_settings_are_named():
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="rounds"):
        blackbox.train_substitute(trainable_linear(), linear_classifier(), x, y, x, y, rounds=0)
    with pytest.raises(ValueError, match="lam"):
        blackbox.train_substitute(trainable_linear(), linear_classifier(), x, y, x, y, lam=float("nan"))


def test_the_sources_augmentation_schedule_steps_down_for_three_rounds_then_up():
    assert [blackbox.augmentation_step(0.1, r, "cleverhans") for r in range(5)] == [-0.1, -0.1, -0.1, 0.1, 0.1]
    assert [blackbox.augmentation_step(0.1, r, "constant") for r in range(5)] == [0.1] * 5
    model, x, y = linear_classifier(), torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    up, down = blackbox.jacobian_augmentation(model, x, y, 0.5), blackbox.jacobian_augmentation(model, x, y, -0.5)
    torch.testing.assert_close(down - x, -(up - x))  # the same step, the other way
    with pytest.raises(ValueError, match="lam_schedule"):
        blackbox.train_substitute(trainable_linear(), model, x, y, x, y, rounds=1, lam_schedule="cosine")
