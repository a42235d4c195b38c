"""The paper path of chapters 1-2 as a Colab reader runs it, checked offline: a dry run with the
paper's three architectures at random initialisation (labelled so), on the mirror, at tiny counts, so
every three-model table and figure and the 3 x 3 transfer matrix run on each CI run (the real weights
and the 5000 images need the internet); a re-run after an interruption; seeded deterministic runs."""
import papermill
import pandas as pd
import pytest

from nbutils.models import PAPER_MODELS
from test_book import ROOT

DRY = {"profile": "smoke", "models": PAPER_MODELS, "dataset": "imagenet-sample"}


def dry_run(chapter, tmp_path, **parameters):
    """Execute ``chapter`` with the paper's models at random initialisation; returns its results folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    results = tmp_path / "results"
    parameters = {**DRY, **parameters, "results_dir": str(results)}
    parameters.setdefault("cache_dir", str(tmp_path / "cache"))
    papermill.execute_notebook(str(ROOT / "book" / f"{chapter}.ipynb"), str(tmp_path / f"{chapter}.ipynb"),
                               cwd=str(ROOT / "book"), kernel_name="python3", progress_bar=False, parameters=parameters)
    return results


@pytest.mark.slow
def test_chapter_1_runs_the_three_paper_architectures_labelled_as_random(tmp_path):
    results = dry_run("01_fgsm_imagenet", tmp_path, weights=["random"], n_images=10)
    clean = pd.read_csv(results / "clean_error.csv")
    assert list(clean.model) == PAPER_MODELS and set(clean.weights) == {"random-init"}
    assert all(label.endswith("(random init)") for label in clean.label)
    sweep = pd.read_csv(results / "fgsm_sweep.csv")
    assert set(sweep.model) == set(PAPER_MODELS) and set(sweep.convention) == {"pixel", "normalised"}
    assert {f"fig{k}_{m}_random.png" for k in (1, 2) for m in PAPER_MODELS} <= {p.name for p in results.iterdir()}


@pytest.mark.slow
def test_chapter_2_runs_every_three_model_table_and_the_3x3_transfer_matrix(tmp_path):
    results = dry_run("02_adversarial_patch", tmp_path, weights="random", n_images=12, targets=["piggy bank"], runs=1)
    success = pd.read_csv(results / "patch_success.csv")
    assert set(success.model) == set(PAPER_MODELS)
    transfer = pd.read_csv(results / "transfer.csv")
    assert set(zip(transfer["trained on"], transfer["scored on"])) == {(a, b) for a in PAPER_MODELS for b in PAPER_MODELS}
    names = {p.name for p in results.iterdir()}
    assert {f"tables_7_12_heatmap_{m}.png" for m in PAPER_MODELS} <= names
    assert {"fig4_resnet101.png", "fig5_alexnet.png", "fig6_regnet_y_400mf.png"} <= names


@pytest.mark.slow
def test_a_rerun_of_chapter_1_after_an_interruption_repeats_no_finished_model(tmp_path):
    cache = tmp_path / "cache"
    two_models = dict(weights=["standin", "random"], n_images=6, cache_dir=str(cache), deterministic=True)
    first = pd.read_csv(dry_run("01_fgsm_imagenet", tmp_path / "a", **two_models, models=["efficientnet_lite0"])
                        / "fgsm_sweep.csv")
    entries = sorted(p for p in cache.iterdir() if p.suffix == ".pt")
    assert len(entries) == 2  # one per (model, weights), kept as each finished
    lost = next(p for p in entries if "_random_" in p.name)
    lost.unlink()  # the runtime died before the second model finished
    second_results = dry_run("01_fgsm_imagenet", tmp_path / "b", **two_models, models=["efficientnet_lite0"])
    log = (tmp_path / "b" / "01_fgsm_imagenet.ipynb").read_text()
    assert log.count("finished in an earlier run") == 1 and "efficientnet_lite0_standin: finished" in log
    pd.testing.assert_frame_equal(pd.read_csv(second_results / "fgsm_sweep.csv"), first)


@pytest.mark.slow
def test_two_seeded_deterministic_runs_of_chapter_2_give_identical_tables(tmp_path):
    small = dict(models=["efficientnet_lite0"], weights="standin", n_images=12, targets=["piggy bank"], sizes=[32],
                 figure_size=32, deterministic=True)
    tables = [pd.read_csv(dry_run("02_adversarial_patch", tmp_path / run, **small) / "patch_success.csv")
              for run in ("a", "b")]
    pd.testing.assert_frame_equal(*tables)
    assert "deterministic algorithms on" in (tmp_path / "a" / "02_adversarial_patch.ipynb").read_text()
