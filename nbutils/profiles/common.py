"""What the pages' declarations share: the run's own parameters (seed, device, folders...) and the
rules whose choices come from the package (model and dataset names), read only when checked."""
from __future__ import annotations

import torch

from ..params import ANY, Param, Rule, param


def _imagenet_models() -> list[str]:
    from ..models import IMAGENET_MODELS
    return IMAGENET_MODELS


def _paper_models() -> list[str]:
    from ..models import PAPER_MODELS
    return PAPER_MODELS


def _weights_names() -> list[str]:
    from ..models import IMAGENET_MODELS, weights_names
    return sorted({w for name in IMAGENET_MODELS for w in weights_names(name)})


def _imagenet_classes() -> list[str]:
    from ..data import imagenet_class_names
    return imagenet_class_names()


def _imagenet_subsets() -> list[str]:
    from ..data import IMAGENET_SUBSETS
    return list(IMAGENET_SUBSETS)


def _digit_datasets() -> list[str]:
    from ..data import DIGIT_DATASETS
    return list(DIGIT_DATASETS)


def model_f_layers() -> list[str]:
    """The named layers of chapter 5's model F."""
    from ..models import mnist_model
    with torch.random.fork_rng(devices=[]):  # building the net seeds torch: leave the chapter's stream alone
        return [name for name, _ in mnist_model("model_f").named_modules() if name]


IMAGENET_MODEL_NAMES = Rule(choices=_imagenet_models, element=str)
PAPER_MODEL_NAME = Rule(choices=_paper_models)
WEIGHTS_NAMES = Rule(choices=_weights_names, element=str)
IMAGENET_CLASS = Rule(choices=_imagenet_classes, element=str)
IMAGENET_SUBSET = Rule(choices=_imagenet_subsets)
DIGIT_DATASETS = Rule(choices=_digit_datasets, element=str)
MODEL_F_LAYERS = Rule(choices=model_f_layers, element=str)
INDEX = Rule(low=0, element=int)


def run_parameters(chapter: str, *, seed: str, device: str = "auto", cache: str | None = None,
                   deterministic: bool = False, download: bool = True, **profiles) -> list[Param]:
    """The parameters every chapter takes about its run: seed (``seed``: what it seeds), device
    (``device``: its default; ``profiles``, e.g. ``smoke="cpu"``, other profiles' devices),
    deterministic (when ``deterministic``), download (when ``download``), data_dir, results_dir and,
    for a page that keeps a ``cache`` of that kind, cache_dir."""
    found = [param("seed", int, seed, 0, Rule(low=0)),
             param("device", str, '"auto" | "cpu" | "cuda"', device, ANY, **profiles)]
    if deterministic:
        found.append(param("deterministic", bool, "PyTorch deterministic algorithms: seeded GPU runs repeat exactly "
                                                  "(slower)", False))
    if download:
        found.append(param("download", bool, "fetch missing weights and data, checksummed (machines with internet only)",
                           False))
    found += [param("data_dir", str, "a data root searched before NBUTILS_DATA and data/", ""),
              param("results_dir", str, f"tables and figures; empty: $NBUTILS_RESULTS/<profile>/{chapter}, else "
                                        "runs/results/<profile>/<chapter>", "")]
    if cache:
        found.append(param("cache_dir", str, f"cached {cache}, reused when their settings and code match; empty: "
                                             f"$NBUTILS_CACHE/{cache}, else runs/{cache}", ""))
    return found
