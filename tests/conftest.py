"""Shared fixtures: small random classifiers, the offline mirror, the smoke profile."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from nbutils.models import Classifier, freeze

ROOT = Path(__file__).resolve().parents[1]
# Notebooks run by the tests use the smoke profile; the mirror defaults to the sibling shared/data.
os.environ["NBUTILS_PROFILE"] = "smoke"
os.environ.setdefault("NBUTILS_DATA", str(ROOT.parent / "shared" / "data"))
# absolute paths: notebooks run with book/ as their working directory
os.environ["NBUTILS_DATA"] = os.pathsep.join(str(Path(p).resolve()) for p in os.environ["NBUTILS_DATA"].split(os.pathsep) if p)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No mirror, and an empty project data/ folder under tmp_path."""
    from nbutils import data
    monkeypatch.setenv("NBUTILS_DATA", str(tmp_path / "mirror"))
    monkeypatch.setattr(data, "project_data_dir", lambda: tmp_path / "project-data")
    return tmp_path


#: The datasets the tests read; without them the run stops at once (see pytest_sessionstart).
NEEDED_DATASETS = ("mnist", "fashion-mnist", "imagenet-sample")


def pytest_sessionstart(session):
    """Stop the whole run with one message when the offline data are missing, instead of hundreds of
    follow-on errors from every notebook and loader."""
    from nbutils import data

    missing = []
    for name in NEEDED_DATASETS:
        try:
            data.resolve(name)
        except FileNotFoundError:
            missing.append(name)
    if missing:
        roots = ", ".join(str(r) for r in data.data_roots())
        pytest.exit(f"the tests need the datasets {missing}, which are not under any data root ({roots}). "
                    "Point NBUTILS_DATA at an offline mirror (CI: ../shared/data), or, on a machine with "
                    "internet, run `python3 -m nbutils.data` once to download them, checksummed, into data/.",
                    returncode=4)


def tiny_classifier(seed: int = 0, channels: int = 3, classes: int = 10) -> Classifier:
    """A seeded conv net on (N, channels, 8, 8) pixels with its own normalisation."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, classes))
    return freeze(Classifier(net, [0.4] * channels, [0.25] * channels, name="tiny", weights_id="random-init",
                             class_names=[str(i) for i in range(classes)], resize=None, crop=None))


def linear_classifier(seed: int = 0, classes: int = 4) -> Classifier:
    """A seeded linear softmax model on (N, 1, 4, 4) pixels."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    return freeze(Classifier(net, [0.5], [0.5], name="linear", weights_id="random-init",
                             class_names=[str(i) for i in range(classes)], resize=None, crop=None))


class ScaleBy(nn.Module):
    """Multiplies its input by a constant."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, z):
        return z * self.factor


def saturated_classifier(seed: int = 0, factor: float = 1e6) -> Classifier:
    """tiny_classifier with its logits scaled by ``factor``: a float32 softmax saturates to exactly
    one-hot, as a net distilled at T ~ factor does when tested at T = 1."""
    base = tiny_classifier(seed)
    return Classifier(nn.Sequential(base.net, ScaleBy(factor)), [0.4] * 3, [0.25] * 3, name="saturated",
                      weights_id="random-init", class_names=base.class_names, resize=None, crop=None)


@pytest.fixture
def tiny():
    return tiny_classifier()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(12, 3, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = Path(os.environ["NBUTILS_DATA"].split(os.pathsep)[0])
    if not (path / "imagenet-sample").is_dir():
        pytest.fail(f"the offline mirror is not at {path}: set NBUTILS_DATA (see README)")
    return path
