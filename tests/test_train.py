"""MNIST nets, the tensor training loop and its cache, distillation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbutils.models import Classifier, mnist_model
from nbutils.defences import distill, soft_labels
from nbutils.files import tensor_digest
from nbutils.train import cached_fit, fit, soft_cross_entropy


def digits(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_mnist_nets_have_the_papers_and_the_halved_shapes():
    net, student = mnist_model("net"), mnist_model("student")
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert net.net.classifier[0].in_features == 9216 and student.net.classifier[0].in_features == 4608
    assert student.net.classifier[0].out_features == 64
    with pytest.raises(ValueError, match="MNIST model name"):
        mnist_model("lenet")


def test_fit_is_identical_under_a_seed_and_learns():
    x, y = digits()
    runs = []
    for _ in range(2):
        model = mnist_model("student", seed=1)
        history = fit(model, x, y, x[:32], y[:32], epochs=3, batch_size=16, lr=1e-3, seed=7, progress=False)
        runs.append((model, history.to_frame()))
    (a, ha), (b, hb) = runs
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert ha.drop(columns="seconds").equals(hb.drop(columns="seconds"))
    assert ha["train_loss"].iloc[-1] < ha["train_loss"].iloc[0]
    assert list(ha.columns) == ["epoch", "train_loss", "train_acc", "n_train", "val_loss", "val_acc", "n_val", "lr",
                                "seconds"]
    assert (ha["n_train"] == x.shape[0]).all() and (ha["n_val"] == 32).all()


def test_cached_fit_trains_once_then_loads_the_same_weights_and_history(tmp_path):
    x, y = digits(64)
    first = mnist_model("student", seed=3)
    h1 = cached_fit(tmp_path, first, x, y, x[:16], y[:16], epochs=1, batch_size=32, lr=1e-3, progress=False)
    second = mnist_model("student", seed=3)
    h2 = cached_fit(tmp_path, second, x, y, x[:16], y[:16], epochs=1, batch_size=32, lr=1e-3, progress=False)
    assert not h1.from_cache and h2.from_cache and h1.rows == h2.rows
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
    assert not second.training
    # another setting, other data, another initialisation: each is a miss with its own file
    cached_fit(tmp_path, mnist_model("student", seed=3), x, y, x[:16], y[:16], epochs=1, batch_size=32, lr=1e-4,
               progress=False)
    flipped = y.roll(1)
    assert not cached_fit(tmp_path, mnist_model("student", seed=3), x, flipped, x[:16], y[:16], epochs=1,
                          batch_size=32, lr=1e-3, progress=False).from_cache
    assert not cached_fit(tmp_path, mnist_model("student", seed=4), x, y, x[:16], y[:16], epochs=1, batch_size=32,
                          lr=1e-3, progress=False).from_cache
    assert len(list(tmp_path.glob("*.pt"))) == 4
    assert tensor_digest(y) != tensor_digest(flipped) and tensor_digest(y) != tensor_digest(y.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_fit_equals_the_eager_loop_on_the_gpu():
    x, y = digits(200)  # 200 = 3 batches of 64 (graph replays) + 8 (eager)
    runs = []
    for graph in (True, False):
        torch.manual_seed(0)
        model = Classifier(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)),
                           [0.0], [1.0], name="nodropout", weights_id="seed0", class_names=[str(i) for i in range(10)],
                           resize=None, crop=None).cuda()
        history = fit(model, x, y, x[:50], y[:50], epochs=5, batch_size=64, lr=1e-3, scheduler_patience=0,
                      scheduler_factor=0.5, cuda_graph=graph, progress=False).to_frame()
        runs.append((model, history))
    (graphed, hg), (eager, he) = runs
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    pd_cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert (hg[pd_cols] - he[pd_cols]).abs().max().max() < 1e-4


def test_plateau_scheduler_cuts_the_learning_rate_on_a_flat_validation_loss():
    x, y = digits(32)
    model = mnist_model("student")
    history = fit(model, x, y, x[:8], y[:8], epochs=6, batch_size=32, lr=0.0, scheduler_patience=1,
                  progress=False).to_frame()
    assert history["lr"].iloc[-1] == 0.0  # lr 0: loss flat, the scheduler still multiplies by 0.1
    model2 = mnist_model("student")
    h2 = fit(model2, x, y, x[:8], y[:8], epochs=4, batch_size=32, lr=1e-6, scheduler_patience=1,
             progress=False).to_frame()
    assert h2["lr"].iloc[-1] < 1e-6


def test_soft_cross_entropy_is_the_hand_computed_distillation_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    t = 4.0
    by_hand = 0.0
    for z, p in zip(logits.tolist(), soft.tolist()):
        scaled = [v / t for v in z]
        log_norm = torch.logsumexp(torch.tensor(scaled), 0).item()
        by_hand += -sum(pk * (zk - log_norm) for pk, zk in zip(p, scaled))
    assert soft_cross_entropy(logits, soft, t).item() == pytest.approx(by_hand / 2, rel=1e-6)
    # with one-hot targets it is the ordinary cross-entropy at T
    onehot = F.one_hot(torch.tensor([0, 2]), 3).float()
    assert soft_cross_entropy(logits, onehot, t).item() == pytest.approx(F.cross_entropy(logits / t, torch.tensor([0, 2])).item())


def test_distill_uses_the_soft_labels_unless_told_to_reproduce_the_bug():
    x, y = digits(64)
    teacher = mnist_model("net", seed=0)
    fit(teacher, x, y, x[:16], y[:16], epochs=1, batch_size=32, lr=1e-3, temperature=20, progress=False)
    soft = soft_labels(teacher, x, 20)
    assert torch.allclose(soft.sum(1), torch.ones(64)) and soft.max() < 1
    sound = mnist_model("student", seed=2)
    buggy = mnist_model("student", seed=2)
    distill(teacher, sound, x, y, x[:16], y[:16], temperature=20, epochs=1, batch_size=32, progress=False)
    distill(teacher, buggy, x, y, x[:16], y[:16], temperature=20, use_soft_labels=False, epochs=1, batch_size=32,
            progress=False)
    assert not torch.equal(sound.net.classifier[-1].weight, buggy.net.classifier[-1].weight)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: fit(m, x, y, x, y, epochs=0), "epochs"),
    (lambda m, x, y: fit(m, x, y[:3], x, y), "labels"),
    (lambda m, x, y: fit(m, x, y, x, y + 10), "val_labels"),
    (lambda m, x, y: fit(m, x.expand(-1, 3, -1, -1), y, x, y), "images"),
    (lambda m, x, y: fit(m, x, y, x[:, :, :20, :20], y), "val_images"),
    (lambda m, x, y: fit(m, x, y, x, y, temperature=0), "temperature"),
    (lambda m, x, y: fit(m, x, y, x, y, soft_targets=torch.full((8, 10), float("nan"))), "soft_targets"),
    (lambda m, x, y: soft_labels(m, x, 0.0), "temperature"),
])
def test_bad_input_names_the_argument(call, match):
    model, (x, y) = mnist_model("student"), digits(8)
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, x, y)


def test_cached_fit_keys_on_the_starting_weights_not_only_the_name():
    x, y = digits(32)
    settings = dict(epochs=1, batch_size=16, lr=1e-3, progress=False)
    import tempfile
    with tempfile.TemporaryDirectory() as cache:
        trained = mnist_model("student", seed=0)
        assert not cached_fit(cache, trained, x, y, x, y, **settings).from_cache
        fresh = mnist_model("student", seed=0)
        assert cached_fit(cache, fresh, x, y, x, y, **settings).from_cache
        continued = mnist_model("student", seed=0)
        continued.load_state_dict(trained.state_dict())  # same name and weights_id, other weights
        assert not cached_fit(cache, continued, x, y, x, y, **settings).from_cache
