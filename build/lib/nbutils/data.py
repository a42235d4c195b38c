"""Datasets: where they are found, how they are checked, how they come back as tensors.

A dataset is looked for, in order, under each folder of ``NBUTILS_DATA`` (``os.pathsep``
separated; CI points it at the read-only offline mirror), then under the project's ``data/``,
and only then downloaded (``download=True``) into ``data/``. Mirrors are verified against their
``SHA256SUMS`` files and never written to. Every loader returns :class:`LabelledImages`: float
images in [0, 1] of shape (N, C, H, W), int64 labels, and class names in label order.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import http.client
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from .batching import split_indices
from .checks import check_choice, check_indices
from .files import project_root, sha256_file

ENV_VAR = "NBUTILS_DATA"
IMAGENET_SAMPLE_URL = "https://github.com/EliSchwartz/imagenet-sample-images/archive/refs/heads/master.zip"
TINY_IMAGENET_URL = "https://raw.githubusercontent.com/phlippe/saved_models/main/tutorial10/TinyImageNet.zip"


@dataclass
class LabelledImages:
    """Images in [0, 1] with their labels.

    images: (N, C, H, W) float32; labels: (N,) int64; class_names: one name per label index.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    root: str
    checksums_verified: bool
    files: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "LabelledImages":
        """The images at ``index``, in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        files = [self.files[i] for i in index.tolist()] if self.files else []
        return LabelledImages(self.images[index], self.labels[index], self.class_names, self.name,
                              self.root, self.checksums_verified, files)

    def split(self, n_val: int, seed: int) -> tuple["LabelledImages", "LabelledImages"]:
        """A seeded random split into (train, validation) parts, the second of ``n_val`` images."""
        train_index, val_index = split_indices(len(self), n_val, torch.Generator().manual_seed(seed))
        train, val = self.subset(train_index), self.subset(val_index)
        return replace(train, name=f"{self.name}[train split]"), replace(val, name=f"{self.name}[val split]")

    def describe(self) -> dict:
        """Provenance: dataset name, count, where it came from (relative to its data root, e.g.
        ``$NBUTILS_DATA/MNIST``: no machine's folders), whether its checksums were verified."""
        return {"dataset": self.name, "count": len(self), "root": portable_path(self.root),
                "checksums_verified": self.checksums_verified}


# ---------------------------------------------------------------------------------------------
# Locations, checksums, downloads

def portable_path(path: str | os.PathLike) -> str:
    """``path`` with its data root replaced by ``$NBUTILS_DATA`` or ``data``, so that provenance names no
    machine's folders; other paths (and any text after the path, e.g. a recorded digest) unchanged."""
    text = str(path)
    for root, label in [*((r, f"${ENV_VAR}") for r in data_roots()[:-1]), (project_data_dir(), "data")]:
        prefix = str(Path(root).resolve())
        if text.startswith(prefix + os.sep):
            return label + text[len(prefix):]
    return text


def project_data_dir() -> Path:
    """``data/`` of the checkout, or ``./data`` when the package is installed without one."""
    root = project_root()
    return (root if root is not None else Path.cwd()) / "data"


def data_roots() -> list[Path]:
    """Folders searched for datasets, in order: each of ``NBUTILS_DATA``, then ``data/``."""
    roots = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return roots + [project_data_dir()]


def read_checksums(sums_file: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-format file."""
    entries = {}
    for number, line in enumerate(sums_file.read_text().splitlines(), start=1):
        if line.strip():
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or len(fields[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in fields[0]):
                raise ValueError(f"{sums_file}, line {number}: expected '<64 hex digits>  <relative path>' "
                                 f"(sha256sum format), got {line[:100]!r}")
            digest, rel = fields
            entries[rel.lstrip("*")] = digest.lower()
    return entries


@lru_cache(maxsize=None)
def _verified(sums_file: Path, base: Path, prefix: str, mtime: float) -> bool:
    expected = {rel: d for rel, d in read_checksums(sums_file).items() if rel.startswith(prefix)}
    if not expected:
        raise ValueError(f"{sums_file} lists no file under {prefix!r}")
    for rel, digest in expected.items():
        path = base / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {sums_file} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise ValueError(f"checksum mismatch for {path}: expected sha256 {digest}, got {actual}. "
                             "The copy is corrupt or was modified; restore it from its source.")
    return True


def verify_checksums(sums_file: Path, base: Path, prefix: str = "") -> bool:
    """Check every file listed in ``sums_file`` (paths relative to ``base``, starting with ``prefix``).

    Raises ValueError naming the first file whose SHA-256 differs. Results are cached per process
    and per modification time of the sums file.
    """
    sums_file, base = Path(sums_file).resolve(), Path(base).resolve()
    return _verified(sums_file, base, prefix, sums_file.stat().st_mtime)


class DownloadError(ConnectionError):
    """A download that could not be made or was cut short; the message says what to do."""


def download_file(url: str, dest: Path, *, sha256: str | None = None, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` and return the file's SHA-256; resumable.

    Bytes land in ``<dest>.part``. A transfer cut short keeps them and raises :class:`DownloadError`;
    the next call asks the server for the rest (an HTTP Range request) and starts over when the
    server does not serve ranges. The length the server announced is checked; the file is renamed
    onto ``dest`` only when complete and, when ``sha256`` is given, matching it (a mismatch removes
    the partial file and raises ValueError). A machine without internet, or an HTTP error, raises
    :class:`DownloadError` naming the URL.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is no prefix the server knows: start over
            part.unlink()
            return download_file(url, dest, sha256=sha256, timeout=timeout)
        raise DownloadError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {url} ({reason}): this machine seems to have no internet access. "
                            "Use an offline copy instead (NBUTILS_DATA, see the README), or download on a "
                            "machine with internet.") from err
    with response:
        resumed = bool(offset) and response.status == 206
        offset = offset if resumed else 0
        announced = response.headers.get("Content-Length")
        expected = offset + int(announced) if announced is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except (http.client.IncompleteRead, OSError) as err:
            raise DownloadError(f"the download of {url} was cut short after {part.stat().st_size} bytes; "
                                "run the same command again to resume it") from err
    size = part.stat().st_size
    if expected is not None and size != expected:
        raise DownloadError(f"the download of {url} was cut short: {size} of {expected} bytes; "
                            "run the same command again to resume it")
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256.lower():
        part.unlink()
        raise ValueError(f"checksum mismatch downloading {url}: expected sha256 {sha256}, got {actual}")
    os.chmod(part, 0o644)
    os.replace(part, dest)
    return actual


def extract_zip(archive: Path, dest_dir: Path, *, rename: dict[str, str] | None = None) -> None:
    """Unpack ``archive`` into ``dest_dir``: tested for integrity first, extracted into a temporary
    folder, then each top-level entry renamed into place (``rename`` maps an entry's name in the
    archive to its name in ``dest_dir``)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".unzip-") as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                broken = zf.testzip()
                if broken is not None:
                    raise ValueError(f"{archive} is corrupt (entry {broken!r} fails its CRC); delete it and download again")
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{archive} is not a valid zip archive ({err}); delete it and download again") from err
        for entry in Path(tmp).iterdir():
            target = dest_dir / (rename or {}).get(entry.name, entry.name)
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)


# ---------------------------------------------------------------------------------------------
# The dataset registry and the resolver

@dataclass(frozen=True)
class DatasetSpec:
    """How to recognise, verify and fetch one dataset.

    folder: its folder under a data root. sums: (checksum file relative to the root, path prefix
    of its entries, folder the entries are relative to: "root" or "folder"), or None.
    url/sha256: a zip archive to fetch (sha256 None when unknown: the digest is then recorded);
    archive_folder: the archive's top folder, renamed to ``folder`` when it is named otherwise.
    fetch: a callable taking the download root, used instead of ``url`` (torchvision's MNIST).
    validate: a callable raising ValueError when a found folder has the wrong structure.
    check_unvouched: a callable raising ValueError naming a truncated or corrupt file, for a folder
    no checksum file vouches for (e.g. idx files shorter than their headers announce).
    """

    name: str
    folder: str
    sums: tuple[str, str, str] | None = None
    url: str | None = None
    sha256: str | None = None
    archive_folder: str | None = None
    fetch: Callable[[Path], None] | None = None
    validate: Callable[[Path], None] | None = None
    check_unvouched: Callable[[Path], None] | None = None
    how_to_get: str = ""


def _torchvision_fetch(cls_name: str) -> Callable[[Path], None]:
    def fetch(root: Path) -> None:
        import torchvision.datasets as tvd
        for train in (True, False):  # torchvision checks each file's md5
            getattr(tvd, cls_name)(str(root), train=train, download=True)
    return fetch


IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _validate_idx_folder(folder: Path) -> None:
    missing = [n for n in IDX_FILES if not (folder / "raw" / n).is_file()]
    if missing:
        raise ValueError(f"{folder}/raw lacks {missing}")


def _check_idx_lengths(folder: Path) -> None:
    for name in IDX_FILES:
        _check_idx_length(folder / "raw" / name)


def _check_idx_length(path: Path) -> None:
    """An idx file (MNIST's format: 2 zero bytes, a type code, the rank, one big-endian uint32 per
    dimension, then the data) must be as long as its header says; a truncated copy is named."""
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
    with open(path, "rb") as f:
        head = f.read(4)
        dims = f.read(4 * head[3]) if len(head) == 4 else b""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in itemsize or len(dims) != 4 * head[3]:
        raise ValueError(f"{path} is not an idx file (bad header); restore it from its source")
    expected = 4 + len(dims) + itemsize[head[2]] * math.prod(int.from_bytes(dims[i:i + 4], "big")
                                                            for i in range(0, len(dims), 4))
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path} holds {actual} bytes but its header announces {expected}: the copy is "
                         "truncated or corrupt; restore it from its source")


def _validate_tiny_imagenet(folder: Path) -> None:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    labels_file = folder / "label_list.json"
    if len(classes) != 1000 or not labels_file.is_file():
        raise ValueError(f"{folder} must hold 1000 class folders and label_list.json "
                         f"(found {len(classes)} folders, label_list.json {'present' if labels_file.is_file() else 'missing'})")
    if len(json.loads(labels_file.read_text())) != 1000:
        raise ValueError(f"{labels_file} must list 1000 class names")


def _validate_imagenet_sample(folder: Path) -> None:
    images = list(folder.glob("*.JPEG"))
    wnids = {p.name.split("_", 1)[0] for p in images}
    if len(images) != 1000 or len(wnids) != 1000:
        raise ValueError(f"{folder} must hold 1000 images <wnid>_<name>.JPEG of 1000 distinct classes, found "
                         f"{len(images)} images of {len(wnids)} classes")


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", sums=("SHA256SUMS", "MNIST/", "root"), fetch=_torchvision_fetch("MNIST"),
        validate=_validate_idx_folder, check_unvouched=_check_idx_lengths,
        how_to_get="the four uncompressed idx files in MNIST/raw/"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "FashionMNIST", sums=("SHA256SUMS", "FashionMNIST/", "root"),
        fetch=_torchvision_fetch("FashionMNIST"), validate=_validate_idx_folder, check_unvouched=_check_idx_lengths,
        how_to_get="the four uncompressed idx files in FashionMNIST/raw/"),
    "imagenet-sample": DatasetSpec(
        "imagenet-sample", "imagenet-sample", sums=("imagenet-sample.SHA256SUMS", "", "folder"),
        url=IMAGENET_SAMPLE_URL, archive_folder="imagenet-sample-images-master", validate=_validate_imagenet_sample,
        how_to_get="1000 images named <wnid>_<name>.JPEG, one per ImageNet class "
                   "(github.com/EliSchwartz/imagenet-sample-images, short side resized to 256)"),
    "tiny-imagenet": DatasetSpec(
        "tiny-imagenet", "TinyImageNet", url=TINY_IMAGENET_URL, validate=_validate_tiny_imagenet,
        how_to_get=f"the UvA tutorial 10 subset: unzip {TINY_IMAGENET_URL} (1000 class folders, "
                   "5 images each, label_list.json)"),
}


@dataclass(frozen=True)
class Resolved:
    """A dataset folder that was found or fetched, and whether checksums vouched for it."""

    path: Path
    checksums_verified: bool
    downloaded_sha256: str | None = None


def _check_found(spec: DatasetSpec, root: Path) -> Resolved:
    folder = root / spec.folder
    if spec.validate is not None:
        spec.validate(folder)
    verified = False
    if spec.sums is not None and (root / spec.sums[0]).is_file():
        sums_file, prefix, relative_to = spec.sums
        verified = verify_checksums(root / sums_file, root if relative_to == "root" else folder, prefix)
    if not verified and spec.check_unvouched is not None:
        spec.check_unvouched(folder)
    return Resolved(folder, verified)


def resolve(dataset: str | DatasetSpec, *, download: bool = False, download_root: Path | None = None) -> Resolved:
    """Find ``dataset`` under the data roots, or download it when ``download`` is True.

    Raises ValueError for an unknown name, FileNotFoundError (saying what to put where) when the
    dataset is absent and ``download`` is False.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else DATASETS[check_choice(dataset, list(DATASETS), "dataset")]
    roots = data_roots()
    for root in roots:
        if (root / spec.folder).is_dir():
            return _check_found(spec, root)
    if not download or (spec.url is None and spec.fetch is None):
        searched = "\n".join(f"  - {r / spec.folder}" for r in roots)
        how = "pass download=True on a machine with internet, or " if (spec.url or spec.fetch) else ""
        raise FileNotFoundError(
            f"dataset {spec.name!r} not found; searched:\n{searched}\nTo fix: {how}put {spec.how_to_get} "
            f"in <root>/{spec.folder}/ under one of those roots ({ENV_VAR} may list several, "
            f"separated by {os.pathsep!r}).")
    root = Path(download_root) if download_root is not None else project_data_dir()
    digest = None
    if spec.fetch is not None:
        try:
            spec.fetch(root)
        except (OSError, RuntimeError) as err:
            raise DownloadError(f"could not download {spec.name!r} ({str(err).splitlines()[0]}); without internet, "
                                f"put {spec.how_to_get} in <root>/{spec.folder}/ under a data root, "
                                f"or point {ENV_VAR} at an offline copy") from err
    else:
        archive = root / f"{spec.folder}.zip"
        digest = download_file(spec.url, archive, sha256=spec.sha256)
        try:  # a corrupt archive (a transfer cut short with no length announced) is named, then removed
            extract_zip(archive, root, rename={spec.archive_folder: spec.folder} if spec.archive_folder else None)
        finally:
            archive.unlink(missing_ok=True)
    found = _check_found(spec, root)
    return Resolved(found.path, found.checksums_verified or spec.sha256 is not None, digest)


# ---------------------------------------------------------------------------------------------
# Loaders

def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (torchvision's metadata; no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_image(path: Path, *, resize: int | None = 256, crop: int | None = 224) -> torch.Tensor:
    """One RGB image as a (3, crop, crop) float tensor in [0, 1]: PIL bilinear Resize then CenterCrop.
    A file that is not a whole image raises ValueError naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated, corrupt or not an image
        raise ValueError(f"cannot read image {path}: {err}. The file is truncated or corrupt; restore it "
                         "from its source (the data README says where each dataset comes from).") from err
    if resize is not None:
        img = TF.resize(img, resize, interpolation=TF.InterpolationMode.BILINEAR)
    if crop is not None:
        img = TF.center_crop(img, crop)
    return TF.pil_to_tensor(img).float().div_(255)


def _load_files(files: Sequence[Path], resize: int | None, crop: int | None) -> torch.Tensor:
    return torch.stack([load_image(f, resize=resize, crop=crop) for f in files])


def imagenet_sample(*, classes: Sequence[int] | None = None, resize: int | None = 256, crop: int | None = 224,
                    download: bool = False) -> LabelledImages:
    """The offline ImageNet sample: one image per class, label = the class's ImageNet index.

    classes: ImageNet indices to load (default: all 1000, in index order).
    Returns images (N, 3, crop, crop) in [0, 1].
    """
    found = resolve("imagenet-sample", download=download)
    files = sorted(found.path.glob("*.JPEG"))
    wnids = sorted({f.name.split("_", 1)[0] for f in files})
    if len(wnids) != 1000 or len(files) != 1000:
        raise ValueError(f"{found.path} must hold 1000 images of 1000 distinct classes, found "
                         f"{len(files)} images of {len(wnids)} classes")
    index = list(range(1000)) if classes is None else check_indices(classes, 1000, "classes")
    chosen = [files[c] for c in index]  # files sorted by wnid = ImageNet index order
    return LabelledImages(_load_files(chosen, resize, crop), torch.tensor(index, dtype=torch.long),
                          imagenet_class_names(), "imagenet-sample", str(found.path), found.checksums_verified,
                          [f.name for f in chosen])


def image_folder(root: Path, *, resize: int | None = 256, crop: int | None = 224,
                 indices: Sequence[int] | None = None, name: str | None = None,
                 class_names: list[str] | None = None) -> LabelledImages:
    """Any ImageNet subset in ImageFolder layout (one folder per class, sorted folder = label).

    indices: positions in the sorted (class, file) listing to load (default: all).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    extensions = {".jpeg", ".jpg", ".png"}
    listing = [(label, f) for label, d in enumerate(class_dirs)
               for f in sorted(d.iterdir()) if f.suffix.lower() in extensions]
    if not listing:
        raise ValueError(f"{root} holds no images in class folders")
    if indices is not None:
        listing = [listing[i] for i in indices]
    labels = torch.tensor([label for label, _ in listing], dtype=torch.long)
    names = class_names if class_names is not None else [d.name for d in class_dirs]
    return LabelledImages(_load_files([f for _, f in listing], resize, crop), labels, names,
                          name or root.name, str(root), False, [f"{f.parent.name}/{f.name}" for _, f in listing])


def tiny_imagenet(*, indices: Sequence[int] | None = None, download: bool = False) -> LabelledImages:
    """The main paper's 5000-image subset (5 per class, pre-cropped to 224): image i has class i // 5.

    Its checksum is not published, so a download is validated by structure and its SHA-256 recorded
    (``root`` then reads ``<path> (downloaded sha256 ...)``).
    """
    found = resolve("tiny-imagenet", download=download)
    names = json.loads((found.path / "label_list.json").read_text())
    data = image_folder(found.path, resize=None, crop=None, indices=indices, name="tiny-imagenet", class_names=names)
    if found.downloaded_sha256:
        data.root = f"{found.path} (downloaded sha256 {found.downloaded_sha256})"
    return data


def _idx_dataset(cls_name: str, name: str, train: bool, download: bool) -> LabelledImages:
    import torchvision.datasets as tvd
    found = resolve(name, download=download)
    ds = getattr(tvd, cls_name)(str(found.path.parent), train=train, download=False)
    images = ds.data.unsqueeze(1).float().div_(255)
    return LabelledImages(images, ds.targets.long(), list(ds.classes), f"{name}-{'train' if train else 'test'}",
                          str(found.path), found.checksums_verified)


def mnist(train: bool = True, *, download: bool = False) -> LabelledImages:
    """MNIST through torchvision: images (N, 1, 28, 28) in [0, 1], no normalisation."""
    return digits("mnist", train, download=download)


def fashion_mnist(train: bool = True, *, download: bool = False) -> LabelledImages:
    """Fashion-MNIST through torchvision: images (N, 1, 28, 28) in [0, 1]."""
    return digits("fashion-mnist", train, download=download)


#: The 28x28 grey-scale datasets by name: their torchvision class.
DIGIT_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def digits(name: str, train: bool = True, *, download: bool = False) -> LabelledImages:
    """A dataset of :data:`DIGIT_DATASETS` by name ("mnist" or "fashion-mnist"): images (N, 1, 28, 28)
    in [0, 1]."""
    check_choice(name, list(DIGIT_DATASETS), "dataset")
    return _idx_dataset(DIGIT_DATASETS[name], name, train, download)


#: The ImageNet subsets by name: their number of images.
IMAGENET_SUBSETS = {"tiny-imagenet": 5000, "imagenet-sample": 1000}


def imagenet_subset(name: str, *, n_images: int = 0, resize: int | None = 256, crop: int | None = 224,
                    download: bool = False) -> LabelledImages:
    """The first ``n_images`` (0: all) of an ImageNet subset by name.

    "tiny-imagenet" is pre-cropped to 224 (no resize, as in the tutorial); "imagenet-sample" is
    resized and centre-cropped to the model's eval sizes ``resize``/``crop``.
    """
    check_choice(name, list(IMAGENET_SUBSETS), "dataset")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or not 0 <= n_images <= IMAGENET_SUBSETS[name]:
        raise ValueError(f"n_images must be an int in [0, {IMAGENET_SUBSETS[name]}] for {name} (0: all), got {n_images!r}")
    if name == "tiny-imagenet":
        return tiny_imagenet(indices=range(n_images) if n_images else None, download=download)
    return imagenet_sample(classes=range(n_images) if n_images else None, resize=resize, crop=crop, download=download)


def imagenet_for(model, name: str, *, n_images: int = 0, download: bool = False) -> LabelledImages:
    """:func:`imagenet_subset` at ``model``'s eval sizes (its ``resize`` and ``crop``), loaded once per
    (dataset, count, sizes) and kept: torchvision's V2 weights evaluate at another resize than V1."""
    return _imagenet_kept(name, n_images, getattr(model, "resize", 256), getattr(model, "crop", 224), download)


@lru_cache(maxsize=8)
def _imagenet_kept(name: str, n_images: int, resize: int | None, crop: int | None, download: bool) -> LabelledImages:
    return imagenet_subset(name, n_images=n_images, resize=resize, crop=crop, download=download)


def add_data_root(path: str | os.PathLike) -> None:
    """Search ``path`` before the other data roots (prepends it to ``NBUTILS_DATA``)."""
    os.environ[ENV_VAR] = os.pathsep.join(p for p in (str(path), os.environ.get(ENV_VAR, "")) if p)


# ---------------------------------------------------------------------------------------------
# The fetch command

def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m nbutils.data [NAME ...] [--root DIR]``: find or download the book's datasets."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python3 -m nbutils.data",
        description="Find each dataset under the data roots (NBUTILS_DATA, then data/), or download it, "
                    "checksummed and resumable, into data/ (or --root). Needs the internet for what is missing.")
    parser.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                        help=f"datasets to get: {', '.join(DATASETS)}, or all (default)")
    parser.add_argument("--root", help="download into this folder instead of the checkout's data/")
    args = parser.parse_args(argv)
    names = list(DATASETS) if "all" in args.names else args.names
    failures = 0
    for name in names:
        try:
            found = resolve(name, download=True, download_root=Path(args.root) if args.root else None)
        except (ConnectionError, ValueError, FileNotFoundError) as err:
            print(f"{name}: FAILED: {err}", file=sys.stderr)
            failures += 1
            continue
        check = ("checksums verified" if found.checksums_verified else
                 f"downloaded, sha256 {found.downloaded_sha256}" if found.downloaded_sha256 else "no checksum file")
        print(f"{name}: {found.path} ({check})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
