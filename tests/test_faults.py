"""Bad input and faults, as a new user meets them: every bad argument of every public function gives
a ValueError or TypeError naming it (drawn by hypothesis); data on disk that is truncated or
malformed, downloads cut short or missing, and cache entries that are truncated, swapped, of another
model or a pickle payload are named, and never used or left behind."""
import functools
import http.server
import math
import pickle
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from nbutils import attacks, data, defences, detect, gmm, metrics, models, patch, train
from conftest import tiny_classifier
from test_data import CutOnceServer, serving, toy_spec, toy_zip

MODEL = tiny_classifier()
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 3, 5, 9])
DIGITS, DIGIT_LABELS = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(8)
MNIST = models.mnist_model("student")
PATCH = torch.rand(3, 2, 2)
FEATURES = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
CLASSES = torch.arange(40) % 2

# ---------------------------------------------------------------------------------------------
# Bad values by kind: what an argument of that kind must refuse

not_a_number = st.one_of(st.text(max_size=5), st.none(), st.booleans(), st.lists(st.floats(), max_size=2))
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
KINDS = {
    "unit": st.one_of(not_a_number, non_finite, st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-6)),
    "nonnegative": st.one_of(not_a_number, non_finite, st.floats(max_value=-1e-9)),
    "positive": st.one_of(not_a_number, non_finite, st.floats(max_value=0.0)),
    "count": st.one_of(not_a_number, st.integers(max_value=0), st.floats(allow_nan=False)),
    "seed": st.one_of(not_a_number, st.integers(max_value=-1), st.floats(allow_nan=False)),
    "flag": st.one_of(st.text(max_size=5), st.none(), st.integers(), st.floats()),
    "fraction": st.one_of(not_a_number, non_finite, st.floats(max_value=0.0), st.floats(min_value=1.0)),
    "fraction from 0": st.one_of(not_a_number, non_finite, st.floats(max_value=-1e-9), st.floats(min_value=1.0)),
    "optional fraction": st.one_of(st.text(max_size=5), st.booleans(), non_finite, st.floats(max_value=0.0),
                                   st.floats(min_value=1.0)),
    "name": st.one_of(st.text(max_size=8).filter(lambda s: s not in KNOWN_NAMES), st.integers(), st.none()),
}
KNOWN_NAMES = {"ce", "margin", "mse", "pixel", "normalised", "linf", "l2", "paper", "sound", "source", "net",
               "student", "simple_cnn", "model_e", "model_f", "mnist", "fashion-mnist", "cpu", "auto", "cuda", "eval",
               "train", "full", "diag", "spherical", "kmeans", "random", "tiny-imagenet", "imagenet-sample",
               "resnet101", "alexnet", "regnet_y_400mf", "resnet34", "efficientnet_lite0", "mps", "meta"}

#: Every public function: {argument: (kind, call with that argument set, word the error must name)}.
PUBLIC = {
    "attacks.fgsm": (lambda **a: attacks.fgsm(MODEL, X, Y, **{"eps": 0.1, **a}),
                     {"eps": "unit", "targeted": "flag", "loss": "name", "convention": "name", "batch_size": "count",
                      "temperature": "positive", "progress": "flag"}),
    "attacks.fgsm_sweep": (lambda **a: attacks.fgsm_sweep(MODEL, X, Y, **{"epsilons": [0.1], **a}),
                           {"k": "count", "return_images": "flag", "batch_size": "count"}),
    "attacks.pgd": (lambda **a: attacks.pgd(MODEL, X, Y, **{"eps": 0.1, "alpha": 0.01, "steps": 2, **a}),
                    {"eps": "unit", "alpha": "nonnegative", "steps": "count", "norm": "name", "seed": "seed",
                     "restarts": "count", "random_start": "flag", "targeted": "flag", "progress": "flag"}),
    "attacks.bim": (lambda **a: attacks.bim(MODEL, X, Y, **{"eps": 0.1, **a}), {"eps": "unit", "steps": "count"}),
    "attacks.iterative_l2": (lambda **a: attacks.iterative_l2(MODEL, X, Y, **{"eps": 1.0, **a}),
                             {"eps": "nonnegative", "steps": "count"}),
    "attacks.deepfool": (lambda **a: attacks.deepfool(MODEL, X, Y, **a),
                         {"steps": "count", "overshoot": "nonnegative", "targeted": "flag"}),
    "attacks.cw_l2": (lambda **a: attacks.cw_l2(MODEL, X, Y, **{"steps": 2, "search_steps": 1, **a}),
                      {"c": "positive", "kappa": "nonnegative", "steps": "count", "search_steps": "count",
                       "lr": "positive", "targeted": "flag"}),
    "metrics.predict": (lambda **a: metrics.predict(MODEL, X, **a), {"batch_size": "count", "progress": "flag"}),
    "metrics.topk_error": (lambda **a: metrics.topk_error(MODEL(X), Y, **a), {"k": "count"}),
    "metrics.fgsm_accuracy": (lambda **a: metrics.fgsm_accuracy(MODEL, X, Y, [0.1], **a),
                              {"protocol": "name", "batch_size": "count"}),
    "metrics.gradient_masking": (lambda **a: metrics.gradient_masking(MODEL, X, Y, **a), {"temperature": "positive"}),
    "train.fit": (lambda **a: train.fit(MNIST, DIGITS, DIGIT_LABELS, DIGITS, DIGIT_LABELS, **{"progress": False, **a}),
                  {"epochs": "count", "batch_size": "count", "lr": "nonnegative", "temperature": "positive",
                   "seed": "seed", "scheduler_factor": "optional fraction", "scheduler_patience": "seed", "progress": "flag",
                   "cuda_graph": "flag"}),
    "defences.soft_labels": (lambda **a: defences.soft_labels(MNIST, DIGITS, **{"temperature": 10.0, **a}),
                             {"temperature": "positive", "batch_size": "count"}),
    "patch.train_patch": (lambda **a: patch.train_patch(MODEL, X, **{"target": 1, "size": 2, "progress": False, **a}),
                          {"size": "count", "epochs": "count", "batch_size": "count", "lr": "positive",
                           "val_fraction": "fraction from 0", "momentum": "fraction from 0",
                           "seed": "seed", "progress": "flag"}),
    "patch.evaluate_patch": (lambda **a: patch.evaluate_patch(MODEL, X, Y, PATCH, 1, **a),
                             {"placements": "count", "stacked": "flag", "seed": "seed", "batch_size": "count"}),
    "patch.random_positions": (lambda **a: patch.random_positions(**{"n": 3, "image_size": (8, 8), "size": 2,
                                                                    "generator": torch.Generator(), **a}),
                               {"n": "seed", "size": "count"}),
    "models.mnist_model": (lambda **a: models.mnist_model(**a), {"name": "name", "seed": "seed", "device": "name"}),
    "models.imagenet_model": (lambda **a: models.imagenet_model(**a), {"name": "name"}),
    "data.digits": (lambda **a: data.digits(**a), {"name": "name"}),
    "data.imagenet_subset": (lambda **a: data.imagenet_subset(**{"name": "imagenet-sample", **a}),
                             {"name": "name", "n_images": "seed"}),
    "gmm.GaussianMixture": (lambda **a: gmm.GaussianMixture(**a),
                               {"n_components": "count", "covariance_type": "name", "reg_covar": "nonnegative",
                                "max_iter": "seed", "tol": "nonnegative"}),
    "detect.GMMDetector.threshold": (lambda **a: detect.GMMDetector(n_components=1).fit(FEATURES, CLASSES).threshold(**a),
                                     {"keep": "fraction"}),
}
CASES = [(function, argument) for function, (_, arguments) in PUBLIC.items() for argument in arguments]
#: The word an error names where it is not the argument's own name.
NAMED_AS = {("models.mnist_model", "name"): "model name", ("models.imagenet_model", "name"): "model name",
            ("data.digits", "name"): "dataset", ("data.imagenet_subset", "name"): "dataset"}


@pytest.mark.parametrize("function,argument", CASES, ids=[f"{f}-{a}" for f, a in CASES])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_bad_argument_of_a_public_function_is_refused_naming_it(function, argument, data):
    call, arguments = PUBLIC[function]
    value = data.draw(KINDS[arguments[argument]], label=argument)
    word = NAMED_AS.get((function, argument), argument)
    with pytest.raises((ValueError, TypeError)) as refused:
        call(**{argument: value})
    assert word in str(refused.value), f"{function}({argument}={value!r}): {refused.value}"


# ---------------------------------------------------------------------------------------------
# Data on disk

def idx_file(path, dims, dtype_code=0x08):
    """A valid idx file of zeros with these dims."""
    header = bytes([0, 0, dtype_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + bytes(math.prod(dims)))


def test_a_truncated_idx_file_without_checksums_is_named_with_its_lengths(isolated):
    raw = isolated / "mirror" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, dims in [("train-images-idx3-ubyte", (6, 28, 28)), ("train-labels-idx1-ubyte", (6,)),
                       ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))]:
        idx_file(raw / name, dims)
    assert not data.resolve("mnist").checksums_verified  # whole files, no sums: accepted
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 1000 bytes but its header announces 4720"):
        data.resolve("mnist")


def test_a_malformed_checksum_line_is_named_by_file_and_line(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'a' * 64}  MNIST/raw/x\nnot-a-digest\n")
    with pytest.raises(ValueError, match=r"SHA256SUMS, line 2: expected '<64 hex digits>  <relative path>'"):
        data.read_checksums(sums)


def test_a_truncated_jpeg_is_named(tmp_path):
    from PIL import Image
    path = tmp_path / "cut.JPEG"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.JPEG"):
        data.load_image(path)


# ---------------------------------------------------------------------------------------------
# Downloads (a loopback server)

class NoLengthCutServer(http.server.BaseHTTPRequestHandler):
    """Serves half of ``payload`` with no Content-Length, then closes: the read ends early, no error."""

    payload = b""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_cut_transfer_with_no_published_checksum_leaves_no_archive_or_folder(isolated, monkeypatch):
    handler = type("Handler", (CutOnceServer,), {"payload": toy_zip(), "cut_next": True, "ranges_asked": []})
    root = isolated / "project-data"
    with serving(handler) as base:
        with pytest.raises(data.DownloadError, match="cut short"):  # the announced length is checked
            data.resolve(toy_spec(f"{base}/Toy.zip", None), download=True)
    assert not (root / "Toy").exists() and not (root / "Toy.zip").exists()  # only Toy.zip.part, to resume
    handler = type("Handler", (NoLengthCutServer,), {"payload": toy_zip()})
    with serving(handler) as base:
        with pytest.raises(ValueError, match="Toy.zip is not a valid zip archive"):  # no length: the archive's own check
            data.resolve(toy_spec(f"{base}/Toy.zip", None), download=True, download_root=isolated / "other")
    assert list((isolated / "other").iterdir()) == []


def test_a_missing_file_names_the_url_and_the_status(isolated, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    with serving(handler) as base:
        with pytest.raises(data.DownloadError, match=rf"{base}/Nothing.zip failed: HTTP 404"):
            data.resolve(toy_spec(f"{base}/Nothing.zip", None), download=True)
    assert not (isolated / "project-data").exists() or list((isolated / "project-data").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Caches

def fit_once(cache, seed=0):
    model = models.mnist_model("student", seed=seed)
    history = train.cached_fit(cache, model, DIGITS, DIGIT_LABELS, DIGITS, DIGIT_LABELS, epochs=1, batch_size=4,
                               progress=False)
    return model, history


def only_entry(cache):
    entries = [p for p in cache.iterdir() if ".bad-" not in p.name]
    assert len(entries) == 1
    return entries[0]


def set_aside_once(cache, spoil, reason):
    """Spoil the one entry of ``cache``; the next call warns with its path and ``reason``, moves it
    aside and retrains to the same weights."""
    reference, _ = fit_once(cache)
    entry = only_entry(cache)
    spoil(entry)
    with pytest.warns(RuntimeWarning, match=rf"cache entry .*{entry.name} is unusable \(.*{reason}"):
        model, history = fit_once(cache)
    assert not history.from_cache
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert len([p for p in cache.iterdir() if ".bad-" in p.name]) == 1
    assert fit_once(cache)[1].from_cache  # the new entry is whole


def test_a_truncated_cache_entry_is_set_aside_and_retrained(tmp_path):
    set_aside_once(tmp_path, lambda p: p.write_bytes(p.read_bytes()[:200]), "RuntimeError")


def test_a_cache_entry_without_its_history_is_set_aside(tmp_path):
    def drop_history(path):
        state = torch.load(path, weights_only=True)
        del state["history"]
        torch.save(state, path)
    set_aside_once(tmp_path, drop_history, "KeyError")


def test_a_cache_entry_holding_another_models_weights_is_set_aside_and_the_model_untouched(tmp_path):
    def other_weights(path):
        state = torch.load(path, weights_only=True)
        state["model"] = models.mnist_model("net").state_dict()
        torch.save(state, path)
    set_aside_once(tmp_path, other_weights, "weights do not fit")


def test_a_pickle_payload_is_never_run_and_set_aside(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    set_aside_once(tmp_path / "cache", lambda p: p.write_bytes(pickle.dumps({"model": Payload()}, protocol=2)), "UnpicklingError")
    assert not marker.exists()


def test_a_swapped_patch_entry_is_caught_by_its_settings_and_recomputed(tmp_path):
    made = {key: patch.cached_patch(tmp_path, MODEL, X, target=key[0], size=key[1], epochs=1, batch_size=2, progress=False)[0]
            for key in [(3, 2), (5, 4)]}
    paths = {key: next(p for p in tmp_path.iterdir() if f"_t{key[0]}_s{key[1]}_" in p.name) for key in made}
    a, b = paths[(3, 2)], paths[(5, 4)]
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.warns(RuntimeWarning, match=r"target: 5, asked 3"):
        trained, hit = patch.cached_patch(tmp_path, MODEL, X, target=3, size=2, epochs=1, batch_size=2, progress=False)
    assert not hit and trained.target == 3 and trained.size == 2 and torch.equal(trained.patch, made[(3, 2)].patch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert patch.cached_patch(tmp_path, MODEL, X, target=3, size=2, epochs=1, batch_size=2, progress=False)[1]


# ---------------------------------------------------------------------------------------------
# Results that are garbage

def test_an_attack_returning_nan_is_named_not_the_callers_images():
    def broken(model, images, labels):
        return torch.full_like(images, math.nan)
    with pytest.raises(ValueError, match=r"the output of attack 'broken' on 'tiny' contains NaN"):
        metrics.robustness_table({"tiny": MODEL}, {"broken": broken}, X, Y)


def test_nan_logits_are_an_error_not_a_100_percent_error_rate():
    with pytest.raises(ValueError, match="logits contain NaN"):
        metrics.topk_error(torch.full((4, 10), math.nan), Y)


def test_dataset_positions_must_be_ints_in_range():
    with pytest.raises(TypeError, match=r"classes\[0\] must be an int, got float 2.7"):
        data.imagenet_sample(classes=[2.7])
    with pytest.raises(ValueError, match=r"n_images must be an int in \[0, 1000\] for imagenet-sample"):
        data.imagenet_subset("imagenet-sample", n_images=2000)


def test_a_cache_entry_made_by_other_code_is_recomputed_with_a_message(tmp_path, monkeypatch):
    from nbutils import files

    calls = []

    def compute():
        calls.append(1)
        return len(calls), {"value": torch.tensor(len(calls))}

    def entry():
        path, key = files.cache_entry(tmp_path, "step", {"eps": 0.1}, data={"x": X})
        return files.cached(path, key, compute, lambda state: int(state["value"]))

    assert entry() == (1, False) and entry() == (1, True)
    monkeypatch.setattr(files, "code_digest", lambda: "another version of the package")
    with pytest.warns(RuntimeWarning, match="another version of the package's code"):
        assert entry() == (2, False)  # the same file name: found, reported, recomputed in place
    assert len(list(tmp_path.iterdir())) == 1 and entry() == (2, True)
