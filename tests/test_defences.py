"""Defences: adversarial training on mixed batches (and the distillation tests in test_train.py)."""
import pytest
import torch
from torch import nn

from nbutils import attacks, data
from nbutils.defences import adversarial_training
from nbutils.metrics import fgsm_accuracy
from nbutils.models import mnist_model
from nbutils.train import fit, mixed_batch

FGSM_SOURCE = attacks.get("fgsm", eps=0.1, loss="mse", convention="normalised")  # the posts' FGSM: MSE, no clip


def digits(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class Spy(nn.Module):
    """Records, for every forward, the module's training flag and a copy of its input."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.net(x)


def spied(seed=0):
    model = mnist_model("simple_cnn", seed=seed)
    model.net = Spy(model.net)
    return model


def test_mixed_batch_keeps_the_clean_part_and_crafts_the_rest_now():
    model, (x, y) = mnist_model("simple_cnn"), digits(8)
    craft = FGSM_SOURCE.kernel(model)
    assert model.training
    mixed = mixed_batch(model, x, y, craft, 0.25, "eval")
    assert model.training  # crafted in eval mode, then given back in training mode
    assert torch.equal(mixed[:6], x[:6])
    model.eval()
    assert torch.equal(mixed[6:], craft(x[6:], y[6:]))
    assert torch.equal(mixed_batch(model, x, y, None, 0.5, "eval"), x)


@pytest.mark.parametrize("fraction,n_adversarial", [(0.5, 4), (0.25, 2), (1.0, 8)])
def test_every_update_sees_the_requested_mix_in_training_mode(fraction, n_adversarial):
    model, (x, y) = spied(), digits(32)
    fit(model, x, y, x[:8], y[:8], epochs=1, batch_size=8, lr=1e-3, attack=FGSM_SOURCE,
        adversarial_fraction=fraction, progress=False)
    forwards = [(training, inputs) for training, inputs in model.net.seen if inputs.shape[0] == 8]
    updates = [inputs for training, inputs in forwards if training]
    assert len(updates) == 4  # 32 images, batch 8
    flat = x.flatten(1)
    for batch in updates:
        rows = batch.flatten(1)
        is_clean = (rows[:, None, :] == flat[None]).all(-1).any(-1)
        assert is_clean[: 8 - n_adversarial].all() and not is_clean[8 - n_adversarial:].any()
        distance = (rows[8 - n_adversarial:, None, :] - flat[None]).abs().amax(-1).amin(-1)
        assert (distance <= 0.1 + 1e-6).all()  # each adversarial row is an FGSM step from a training image
    crafted = [inputs for training, inputs in model.net.seen if not training and inputs.shape[0] == n_adversarial]
    assert len(crafted) >= 4  # every step crafted its adversarial part with the model in eval mode
    assert not model.training  # fit leaves the model in eval mode


def test_the_adversarial_part_is_crafted_from_the_current_weights_not_once():
    x, y = digits(16)
    settings = dict(epochs=1, batch_size=16, lr=1e-2, attack=FGSM_SOURCE, adversarial_fraction=1.0, seed=3,
                    progress=False)
    after_one = mnist_model("simple_cnn", seed=1)
    fit(after_one, x, y, x[:4], y[:4], **settings)
    model = spied(seed=1)
    fit(model, x, y, x[:4], y[:4], **{**settings, "epochs": 2})
    second_update = [inputs for training, inputs in model.net.seen if training and inputs.shape[0] == 16][1]
    generator = torch.Generator().manual_seed(3)
    torch.randperm(16, generator=generator)
    order = torch.randperm(16, generator=generator)  # the second epoch's shuffle
    after_one.eval()
    expected = FGSM_SOURCE.kernel(after_one)(x[order], y[order])
    initial = mnist_model("simple_cnn", seed=1).eval()
    stale = FGSM_SOURCE.kernel(initial)(x[order], y[order])
    torch.testing.assert_close(second_update, expected, rtol=0, atol=1e-6)
    assert not torch.equal(second_update, stale)


def test_seeded_adversarial_training_is_identical_on_the_cpu():
    x, y = digits(48)
    runs = []
    for _ in range(2):
        model = mnist_model("simple_cnn", seed=2)
        history = adversarial_training(model, x, y, x[:16], y[:16], attack=FGSM_SOURCE, epochs=2, batch_size=16,
                                       lr=1e-3, seed=5, progress=False)
        runs.append((model, history.to_frame().drop(columns="seconds")))
    assert all(torch.equal(p, q) for p, q in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()))
    assert runs[0][1].equals(runs[1][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_graphed_and_eager_adversarial_steps_give_the_same_weights_on_the_gpu():
    x, y = digits(200)
    trained = []
    for graph in (True, False):
        model = mnist_model("simple_cnn", seed=0, device="cuda")
        model.net.classifier[3].p = 0.0  # no dropout: graphed and eager draw their masks differently
        fit(model, x, y, x[:50], y[:50], epochs=3, batch_size=64, lr=1e-3, attack=FGSM_SOURCE, cuda_graph=graph,
            progress=False)
        trained.append(model)
    for p, q in zip(trained[0].parameters(), trained[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_adversarial_training_beats_normal_training_under_fgsm_by_a_wide_margin(mirror):
    mnist = data.mnist(train=True).subset(range(4000))
    test = data.mnist(train=False).subset(range(1000))
    fgsm_ce = attacks.get("fgsm", eps=0.2)
    accuracy = {}
    for name, attack in (("normal", None), ("adversarial", fgsm_ce)):
        model = mnist_model("simple_cnn", seed=0)
        fit(model, mnist.images, mnist.labels, test.images[:200], test.labels[:200], epochs=3, batch_size=64, lr=1e-3,
            attack=attack, progress=False)
        accuracy[name] = fgsm_accuracy(model, test.images, test.labels, [0.2])["accuracy"].item()
    assert accuracy["adversarial"] > accuracy["normal"] + 0.3, accuracy


@pytest.mark.parametrize("kwargs, word", [
    (dict(attack="fgsm"), "attack"), (dict(attack=FGSM_SOURCE, adversarial_fraction=1.5), "adversarial_fraction"),
    (dict(attack=FGSM_SOURCE, adversarial_fraction=0), "adversarial_fraction"),
    (dict(attack=FGSM_SOURCE, craft_mode="test"), "craft_mode"),
])
def test_bad_adversarial_training_settings_name_the_argument(kwargs, word):
    x, y = digits(8)
    with pytest.raises((ValueError, TypeError), match=word):
        adversarial_training(mnist_model("simple_cnn"), x, y, x, y, **{"attack": FGSM_SOURCE, **kwargs}, progress=False)


def test_unclipped_training_images_need_pixel_range_false_and_weights_have_a_digest():
    from nbutils.files import state_digest

    model, (x, y) = mnist_model("simple_cnn"), digits(16)
    unclipped = x * 1.2 - 0.1
    with pytest.raises(ValueError, match="images must lie in"):
        fit(model, unclipped, y, x, y, epochs=1, batch_size=8, progress=False)
    before = state_digest(model)
    assert before == state_digest(mnist_model("simple_cnn")) and len(before) == 64
    fit(model, unclipped, y, x, y, epochs=1, batch_size=8, pixel_range=False, progress=False)
    assert state_digest(model) != before
