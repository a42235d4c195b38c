"""ImageNet models: normalisation inside, frozen, clear errors, the stand-in works."""
import hashlib

import pytest
import torch

from nbutils import data, metrics
from nbutils.models import IMAGENET_MEAN, imagenet_model, weights_names


@pytest.mark.parametrize("name", ["resnet101", "alexnet", "regnet_y_400mf", "resnet34", "efficientnet_lite0"])
def test_models_own_their_normalisation_and_are_frozen(name):
    torch.manual_seed(0)
    model = imagenet_model(name, weights="random")
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = model.net(((x - model.mean[:, None, None]) / model.std[:, None, None]).contiguous(memory_format=torch.channels_last))
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.weights_id == "random-init" and model.num_classes == 1000


def test_missing_torchvision_weights_name_file_url_and_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        imagenet_model("resnet101", weights="IMAGENET1K_V2")
    message = str(err.value)
    assert "resnet101-cd907fc2.pth" in message
    assert "https://download.pytorch.org/models/resnet101-cd907fc2.pth" in message
    assert f"TORCH_HOME={tmp_path}" in message


def test_download_without_internet_says_so_and_names_the_file(tmp_path, monkeypatch):
    import urllib.error

    import torch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConnectionError, match="no internet") as err:
        imagenet_model("alexnet", weights="IMAGENET1K_V1", download=True)
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and "offline" in str(err.value)
    with pytest.raises(FileNotFoundError, match="-p download True"):
        imagenet_model("alexnet", weights="IMAGENET1K_V1")


def test_corrupt_torchvision_weights_fail_their_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="checksum mismatch"):
        imagenet_model("alexnet")


def test_present_torchvision_weights_load_with_their_meta(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = imagenet_model("alexnet", weights="random").net
    buffer = tmp_path / "w.pth"
    torch.save(reference.state_dict(), buffer)
    digest = hashlib.sha256(buffer.read_bytes()).hexdigest()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # pose as the real file: the name carries the hash prefix that is verified
    import torchvision.models as tvm
    monkeypatch.setattr(tvm.AlexNet_Weights.IMAGENET1K_V1.value, "url", f"https://example.invalid/alexnet-{digest[:8]}.pth")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    buffer.rename(tmp_path / "hub" / "checkpoints" / f"alexnet-{digest[:8]}.pth")
    model = imagenet_model("alexnet")
    assert model.weights_id == "torchvision:AlexNet_Weights.IMAGENET1K_V1"
    assert model.mean.tolist() == pytest.approx(list(IMAGENET_MEAN)) and model.crop == 224
    assert torch.equal(model.net.features[0].weight, reference.features[0].weight)


@pytest.mark.parametrize("name,weights,word", [("resnet-101", None, "model name"), ("vgg16", None, "model name"),
                                               ("resnet101", "IMAGENET1K_V9", "weights"),
                                               ("alexnet", "IMAGENET1K_V2", "weights"), (101, None, "model name")])
def test_unknown_model_or_weights_is_rejected(name, weights, word):
    with pytest.raises((ValueError, TypeError), match=word):
        imagenet_model(name, weights=weights)


def test_weights_names_show_v2_only_where_torchvision_has_it():
    assert "IMAGENET1K_V2" in weights_names("resnet101") and "IMAGENET1K_V2" in weights_names("regnet_y_400mf")
    assert "IMAGENET1K_V2" not in weights_names("alexnet")


def test_standin_classifies_the_mirrors_goldfish_as_goldfish(mirror):
    model = imagenet_model("efficientnet_lite0")
    assert model.stand_in and "stand-in" in model.label
    goldfish = data.imagenet_sample(classes=[1])
    probs, index = metrics.topk_probabilities(metrics.predict(model, goldfish.images))
    assert model.class_names[index[0, 0]] == "goldfish" and probs[0, 0] > 0.5


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet101", "alexnet", "regnet_y_400mf"])
def test_models_built_in_deterministic_mode_pool_without_the_nondeterministic_kernel(name):
    from nbutils.models import DeterministicAdaptiveAvgPool2d

    torch.manual_seed(0)
    plain = imagenet_model(name, weights="random")
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        deterministic = imagenet_model(name, weights="random")
    finally:
        torch.use_deterministic_algorithms(False)
    pools = [m for m in deterministic.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert pools and all(isinstance(m, DeterministicAdaptiveAvgPool2d) for m in pools)
    assert not any(isinstance(m, DeterministicAdaptiveAvgPool2d) for m in plain.modules())
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    (gp,) = torch.autograd.grad(plain(x).sum(), x)
    (gd,) = torch.autograd.grad(deterministic(x).sum(), x)
    assert torch.allclose(plain(x), deterministic(x), rtol=1e-5, atol=1e-6) and torch.allclose(gp, gd, rtol=1e-4, atol=1e-6)


def test_a_deterministic_pool_of_another_size_falls_back_to_pytorchs():
    from nbutils.models import DeterministicAdaptiveAvgPool2d

    x = torch.rand(1, 2, 7, 5)
    assert torch.equal(DeterministicAdaptiveAvgPool2d((3, 2))(x), torch.nn.AdaptiveAvgPool2d((3, 2))(x))
    assert torch.equal(DeterministicAdaptiveAvgPool2d((7, 5))(x), x)
    assert torch.allclose(DeterministicAdaptiveAvgPool2d(1)(x), x.mean((-2, -1), keepdim=True))


def test_model_f_as_table_1_lists_it_ends_on_a_3200_d_hidden_state():
    from nbutils.detect import hidden_states
    from nbutils.models import mnist_model
    model = mnist_model("model_f_table1", seed=0).eval()
    features, logits = hidden_states(model, torch.rand(3, 1, 28, 28), "net.relu2")
    assert features.shape == (3, 3200) and logits.shape == (3, 10)
    assert not any(name.endswith("conv3") for name, _ in model.named_modules())
