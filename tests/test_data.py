"""The dataset resolver: mirror, project folder, loopback download, checksums."""
import contextlib
import functools
import hashlib
import http.server
import io
import os
import time
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from nbutils import data


@pytest.fixture
def loopback(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    with serving(handler) as base:
        yield base, www


@contextlib.contextmanager
def serving(handler):
    """A threaded HTTP server on 127.0.0.1 with ``handler``; yields its base URL, then shuts it down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def toy_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("Toy/a/1.txt", "one")
        zf.writestr("Toy/b/2.txt", "two")
    return buffer.getvalue()


def toy_spec(url, sha256):
    def validate(folder: Path):
        if sorted(p.name for p in folder.iterdir()) != ["a", "b"]:
            raise ValueError("Toy needs folders a and b")
    return data.DatasetSpec("toy", "Toy", url=url, sha256=sha256, validate=validate, how_to_get="the toy zip")


def test_imagenet_sample_comes_from_the_mirror_verified_in_imagenet_order(mirror):
    sample = data.imagenet_sample(classes=[1, 3, 999])
    assert sample.images.shape == (3, 3, 224, 224) and sample.images.dtype == torch.float32
    assert 0 <= sample.images.min() and sample.images.max() <= 1
    assert sample.labels.tolist() == [1, 3, 999]
    assert [sample.class_names[i] for i in sample.labels] == ["goldfish", "tiger shark", "toilet tissue"]
    assert sample.files[0] == "n01443537_goldfish.JPEG"
    assert sample.checksums_verified and sample.root == str(mirror / "imagenet-sample")


def test_mnist_and_fashion_mnist_come_through_torchvision(mirror):
    train = data.mnist(train=True)
    test = data.fashion_mnist(train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.max() == 1 and train.images.min() == 0
    assert train.labels.dtype == torch.long and set(train.labels.unique().tolist()) == set(range(10))
    assert train.checksums_verified and test.class_names[0] == "T-shirt/top"


def test_nothing_found_says_what_to_put_where(isolated):
    with pytest.raises(FileNotFoundError) as err:
        data.resolve("imagenet-sample")
    message = str(err.value)
    assert str(isolated / "mirror" / "imagenet-sample") in message
    assert str(isolated / "project-data" / "imagenet-sample") in message
    assert "<wnid>_<name>.JPEG" in message


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="dataset"):
        data.resolve("cifar10")


def test_mirror_checksum_mismatch_is_reported_with_the_file(isolated):
    raw = isolated / "mirror" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    lines = []
    for name in names:
        (raw / name).write_bytes(name.encode())
        lines.append(f"{hashlib.sha256(name.encode()).hexdigest()}  MNIST/raw/{name}")
    (isolated / "mirror" / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert data.resolve("mnist").checksums_verified
    (raw / names[2]).write_bytes(b"tampered")
    later = time.time() + 5  # a new mtime on the sums file: the cached verdict no longer applies
    os.utime(isolated / "mirror" / "SHA256SUMS", (later, later))
    with pytest.raises(ValueError, match="checksum mismatch.*t10k-images"):
        data.resolve("mnist")


def test_project_folder_is_searched_after_the_mirror(isolated):
    folder = isolated / "project-data" / "Toy"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    found = data.resolve(toy_spec(None, None))
    assert found.path == folder and not found.checksums_verified


def test_download_from_loopback_is_checksummed_extracted_and_atomic(isolated, loopback):
    base, www = loopback
    payload = toy_zip()
    (www / "Toy.zip").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.resolve(toy_spec(f"{base}/Toy.zip", digest))
    found = data.resolve(toy_spec(f"{base}/Toy.zip", digest), download=True)
    assert found.path == isolated / "project-data" / "Toy" and found.checksums_verified
    assert found.downloaded_sha256 == digest
    assert (found.path / "a" / "1.txt").read_text() == "one"
    assert sorted(p.name for p in found.path.parent.iterdir()) == ["Toy"]  # no archive, no temp files


def test_download_with_wrong_checksum_leaves_nothing(isolated, loopback):
    base, www = loopback
    (www / "Toy.zip").write_bytes(toy_zip())
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.resolve(toy_spec(f"{base}/Toy.zip", "0" * 64), download=True)
    assert not (isolated / "project-data").exists() or not any((isolated / "project-data").iterdir())


def test_unknown_checksum_is_recorded(isolated, loopback):
    base, www = loopback
    payload = toy_zip()
    (www / "Toy.zip").write_bytes(payload)
    found = data.resolve(toy_spec(f"{base}/Toy.zip", None), download=True)
    assert found.downloaded_sha256 == hashlib.sha256(payload).hexdigest() and not found.checksums_verified


def test_found_folder_with_wrong_structure_is_rejected(isolated):
    (isolated / "project-data" / "Toy" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="folders a and b"):
        data.resolve(toy_spec(None, None))


def test_tiny_imagenet_structure_is_validated(isolated):
    folder = isolated / "project-data" / "TinyImageNet"
    (folder / "n0").mkdir(parents=True)
    with pytest.raises(ValueError, match="1000 class folders"):
        data.tiny_imagenet()


def test_image_folder_labels_follow_sorted_folders(tmp_path, mirror):
    for wnid in ["n01496331_electric_ray", "n01443537_goldfish"]:
        (tmp_path / wnid.split("_")[0]).mkdir()
        (tmp_path / wnid.split("_")[0] / f"{wnid}.JPEG").write_bytes((mirror / "imagenet-sample" / f"{wnid}.JPEG").read_bytes())
    images = data.image_folder(tmp_path, class_names=["goldfish", "electric ray"])
    assert images.labels.tolist() == [0, 1] and images.files[0].startswith("n01443537/")
    assert images.images.shape == (2, 3, 224, 224)


def test_split_is_seeded_disjoint_and_complete(mirror):
    digits_train = data.mnist(train=True)
    train, val = digits_train.split(10_000, seed=0)
    again, _ = digits_train.split(10_000, seed=0)
    assert len(train) == 50_000 and len(val) == 10_000 and torch.equal(train.labels, again.labels)
    index_train, index_val = data.split_indices(60_000, 10_000, torch.Generator().manual_seed(0))
    assert torch.equal(torch.sort(torch.cat([index_train, index_val])).values, torch.arange(60_000))
    assert torch.equal(val.images, digits_train.images[index_val])
    with pytest.raises(ValueError, match="n_val"):
        digits_train.split(60_000, seed=0)


class CutOnceServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` at any path, with Range requests; the first response is cut half-way
    (the full length announced, half the bytes sent, the connection closed)."""

    payload = b""
    cut_next = True
    ranges_asked: list = []

    def do_GET(self):
        asked = self.headers.get("Range")
        start = int(asked.split("=")[1].rstrip("-")) if asked else 0
        type(self).ranges_asked.append(asked)
        body = self.payload[start:]
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(body)))
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.end_headers()
        if type(self).cut_next:
            type(self).cut_next = False
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_once_server():
    handler = type("Handler", (CutOnceServer,), {"payload": toy_zip(), "cut_next": True, "ranges_asked": []})
    with serving(handler) as base:
        yield f"{base}/Toy.zip", handler


def test_the_fetch_command_resumes_a_cut_download_and_checks_its_checksum(isolated, cut_once_server, monkeypatch, capsys):
    url, handler = cut_once_server
    digest = hashlib.sha256(handler.payload).hexdigest()
    monkeypatch.setitem(data.DATASETS, "toy", toy_spec(url, digest))
    root = isolated / "fetched"
    assert data.main(["toy", "--root", str(root)]) == 1  # cut half-way: the command fails, saying so
    assert "cut short" in capsys.readouterr().err
    part = root / "Toy.zip.part"
    assert part.is_file() and 0 < part.stat().st_size < len(handler.payload) and not (root / "Toy").exists()
    assert data.main(["toy", "--root", str(root)]) == 0  # resumed from where it stopped
    assert handler.ranges_asked == [None, f"bytes={len(handler.payload) // 2}-"]
    assert (root / "Toy" / "a" / "1.txt").read_text() == "one"
    assert sorted(p.name for p in root.iterdir()) == ["Toy"]  # no archive, no partial file left
    assert "(checksums verified)" in capsys.readouterr().out


def test_a_resumed_download_with_the_wrong_checksum_leaves_nothing(isolated, cut_once_server, monkeypatch):
    url, handler = cut_once_server
    monkeypatch.setitem(data.DATASETS, "toy", toy_spec(url, "0" * 64))
    root = isolated / "fetched"
    assert data.main(["toy", "--root", str(root)]) == 1
    assert data.main(["toy", "--root", str(root)]) == 1
    assert not root.exists() or list(root.iterdir()) == []


def test_no_internet_is_said_plainly(isolated):
    spec = data.DatasetSpec("toy", "Toy", url="http://127.0.0.1:9/Toy.zip", how_to_get="the toy zip")
    with pytest.raises(data.DownloadError, match="no internet"):
        data.resolve(spec, download=True)
