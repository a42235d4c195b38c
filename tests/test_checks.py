"""The one validation layer: each shared check once, then one "names the argument" case per public
function (each entry point reaches the checks it should)."""
import pytest
import torch
from torch import nn

from nbutils import attacks, checks, defences, metrics, params, patch, train
from nbutils.batching import default_device, module_mode
from nbutils.models import imagenet_model, mnist_model
from conftest import tiny_classifier

MODEL = tiny_classifier()
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 3, 5, 9])


@pytest.mark.parametrize("images,error", [
    (X * 2, ValueError), (X - 0.5, ValueError), (X[0], ValueError), (X[:0], ValueError),
    (X.clone().fill_(float("nan")), ValueError), ((X * 255).to(torch.uint8), TypeError), (X.numpy(), TypeError),
])
def test_check_images_names_images(images, error):
    with pytest.raises(error, match="images"):
        checks.check_images(images)


@pytest.mark.parametrize("labels,error", [
    (Y[:3], ValueError), (Y + 10, ValueError), (-Y - 1, ValueError), (Y.float(), TypeError), ([0, 1, 2, 3], TypeError),
])
def test_check_labels_names_labels(labels, error):
    with pytest.raises(error, match="labels"):
        checks.check_labels(labels, 4, num_classes=10)


@pytest.mark.parametrize("eps,error", [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("0.1", TypeError), (True, TypeError), (1.5, ValueError)])
def test_check_eps_names_eps(eps, error):
    with pytest.raises(error, match="eps"):
        checks.check_eps(eps, upper=1.0)


@pytest.mark.parametrize("epsilons,error", [([], ValueError), ([0.1, -1], ValueError), (0.1, TypeError),
                                            ("0.1", TypeError), ([0.1, float("nan")], ValueError)])
def test_check_epsilons_names_the_list(epsilons, error):
    with pytest.raises(error, match="epsilons"):
        checks.check_epsilons(epsilons)


@pytest.mark.parametrize("value", ["no", 1, None, "True"])
def test_flags_must_be_booleans(value):
    with pytest.raises(TypeError, match="targeted"):
        checks.check_flag(value, "targeted")


def test_labels_out_of_range_are_rejected_for_a_plain_module_without_num_classes():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    assert not hasattr(plain, "num_classes")
    for call in (lambda: attacks.fgsm(plain, X, Y + 100, eps=0.1), lambda: metrics.fgsm_accuracy(plain, X, Y + 100, [0.1]),
                 lambda: metrics.robustness_table({"plain": plain}, [attacks.get("fgsm", eps=0.1)], X, Y + 100)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
            call()


@pytest.mark.parametrize("images", [torch.rand(2, 1, 8, 8), torch.rand(2, 3, 12, 12), X.double()],
                         ids=["channels", "size", "dtype"])
def test_an_input_the_model_cannot_take_names_images_before_any_work(images):
    with pytest.raises(ValueError, match="images (of shape .* do not fit the model|have dtype)"):
        attacks.fgsm(MODEL, images, Y[:2] if len(images) == 2 else Y, eps=0.1)


def test_unknown_loss_names_and_devices_are_rejected():
    with pytest.raises(ValueError, match="loss"):
        attacks.fgsm(MODEL, X, Y, eps=0.1, loss="typo")
    with pytest.raises(ValueError, match="device 'gpu'"):
        default_device("gpu")


def test_a_callable_loss_is_accepted_and_used():
    # ascending minus the margin steps the other way from ascending the margin
    up = attacks.fgsm(MODEL, X, Y, eps=0.05, loss="margin", convention="normalised")
    down = attacks.fgsm(MODEL, X, Y, eps=0.05, loss=lambda z, y: -attacks.margin_per_image(z, y), convention="normalised")
    torch.testing.assert_close(up - X, X - down)


MNIST = mnist_model("student")
DIGITS, DIGIT_LABELS = torch.rand(8, 1, 28, 28), torch.arange(8)
PATCH = torch.rand(3, 2, 2)

#: One bad call per public function and the word its error must name.
PUBLIC_CALLS = {
    "fgsm": (lambda: attacks.fgsm(MODEL, X, Y, eps=-1), "eps"),
    "fgsm_sweep": (lambda: attacks.fgsm_sweep(MODEL, X, Y, epsilons=[0.1], k=0), "k"),
    "pgd": (lambda: attacks.pgd(MODEL, X, Y, eps=0.1, alpha=0.01, steps=0), "steps"),
    "cw_l2": (lambda: attacks.cw_l2(MODEL, X, Y, c=float("nan")), "c"),
    "get": (lambda: attacks.get("pgd", epsilon=0.1), "epsilon"),
    "predict": (lambda: metrics.predict(MODEL, X, batch_size=0), "batch_size"),
    "fgsm_accuracy": (lambda: metrics.fgsm_accuracy(MODEL, X, Y, [0.1], protocol="paper"), "protocol"),
    "gradient_masking": (lambda: metrics.gradient_masking(MODEL, X, Y, temperature=0), "temperature"),
    "robustness_table": (lambda: metrics.robustness_table({"m": MODEL}, {"a": 3}, X, Y), "attack 'a'"),
    "place_patch": (lambda: patch.place_patch(X, PATCH, torch.zeros(4, 2)), "positions"),
    "train_patch": (lambda: patch.train_patch(MODEL, X, target=10, size=2, progress=False), "target"),
    "evaluate_patch": (lambda: patch.evaluate_patch(MODEL, X, Y, PATCH, 1, stacked="yes"), "stacked"),
    "fit": (lambda: train.fit(MNIST, DIGITS, DIGIT_LABELS, DIGITS, DIGIT_LABELS, epochs=0), "epochs"),
    "cached_fit": (lambda: train.cached_fit(None, MNIST, DIGITS, DIGIT_LABELS + 10, DIGITS, DIGIT_LABELS), "labels"),
    "soft_labels": (lambda: defences.soft_labels(MNIST, DIGITS, temperature=-1), "temperature"),
    "distill": (lambda: defences.distill(MNIST, MNIST, DIGITS, DIGIT_LABELS, DIGITS, DIGIT_LABELS, temperature=10,
                                         use_soft_labels="no"), "use_soft_labels"),
    "imagenet_model": (lambda: imagenet_model("resnet50"), "model name"),
    "mnist_model": (lambda: mnist_model("lenet"), "MNIST model name"),
    "settle": (lambda: params.Page("p", {"smoke": ""}, [params.param("seed", int, "seed", 0)]).settle("smoke", {"seed": "0"}),
               "seed"),
}


@pytest.mark.parametrize("function", list(PUBLIC_CALLS))
def test_each_public_function_names_the_bad_argument(function):
    call, word = PUBLIC_CALLS[function]
    with pytest.raises((ValueError, TypeError), match=word):
        call()


def test_module_mode_restores_each_submodules_own_mode():
    """A wrapper left in training mode around a frozen net (BPDA, a detector head) must not switch the
    net's dropout on when a check runs the wrapper in eval mode and restores it."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    wrapper = nn.Sequential(net)
    assert wrapper.training and not net.training
    with module_mode(wrapper, training=False):
        assert not wrapper.training
    with module_mode(wrapper, training=True):
        assert net[1].training
    assert wrapper.training and not net.training and not net[1].training
