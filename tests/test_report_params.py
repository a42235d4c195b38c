"""Results with provenance, paper-vs-run tables, chapter parameter checks."""
import json

import pandas as pd
import pytest

from nbutils import params, report

PROFILES = {"paper": {"models": ["resnet101"], "epsilons": [0.01, 0.02], "batch_size": 32, "seed": 0,
                      "device": "auto", "download_weights": False},
            "smoke": {"models": ["efficientnet_lite0"], "epsilons": [0.02], "batch_size": 4, "seed": 0,
                      "device": "cpu", "download_weights": False}}


def test_settle_fills_nones_from_the_profile_and_keeps_overrides():
    cfg = params.settle(PROFILES, "smoke", models=None, epsilons=[0.1, 1], batch_size=None)
    assert cfg.profile == "smoke" and cfg.models == ["efficientnet_lite0"] and cfg.epsilons == [0.1, 1]
    assert cfg.batch_size == 4 and cfg.device == "cpu"


@pytest.mark.parametrize("given,error,word", [
    ({"batch_size": "32"}, TypeError, "batch_size"), ({"batch_size": 3.5}, TypeError, "batch_size"),
    ({"batch_size": True}, TypeError, "batch_size"), ({"epsilons": 0.02}, TypeError, "epsilons"),
    ({"download_weights": 1}, TypeError, "download_weights"), ({"model": ["x"]}, ValueError, "model"),
])
def test_settle_rejects_bad_parameters_by_name(given, error, word):
    with pytest.raises(error, match=word):
        params.settle(PROFILES, "paper", **given)


def test_settle_rejects_an_unknown_profile():
    with pytest.raises(ValueError, match="profile"):
        params.settle(PROFILES, "fast")


def test_paper_vs_run_gives_differences_and_keeps_unmatched_rows():
    paper = pd.DataFrame({"model": ["a", "b"], "err": [10.0, 20.0]})
    run = pd.DataFrame({"model": ["a", "c"], "err": [12.5, 1.0]})
    table = report.paper_vs_run(paper, run, on=["model"], values=["err"])
    assert list(table.columns) == ["model", "err (paper)", "err (run)", "err (run - paper)"]
    row = table.set_index("model").loc["a"]
    assert row["err (run - paper)"] == 2.5
    assert set(table["model"]) == {"a", "b", "c"} and table["err (run - paper)"].isna().sum() == 2


def test_paper_vs_run_keeps_several_runs_of_one_paper_row_apart():
    paper = pd.DataFrame({"model": ["a"], "err": [10.0]})
    run = pd.DataFrame({"model": ["a", "a"], "weights": ["V1", "V2"], "err": [15.0, 11.0]})
    table = report.paper_vs_run(paper, run, on=["model"], values=["err"], extra=["weights"])
    assert table["weights"].tolist() == ["V1", "V2"] and table["err (run - paper)"].tolist() == [5.0, 1.0]


def test_write_results_writes_csv_and_json_with_provenance(tmp_path):
    table = pd.DataFrame({"eps": [0.0, 0.1], "top1_error": [20.0, 90.0]})
    record = report.provenance(seed=3, device="cpu", profile="smoke", started=0.0, model="m")
    csv_path, json_path = report.write_results(table, "fgsm", tmp_path / "out", record)
    assert pd.read_csv(csv_path).equals(table)
    saved = json.loads(json_path.read_text())
    assert saved["provenance"]["seed"] == 3 and saved["provenance"]["model"] == "m"
    assert saved["provenance"]["versions"]["torch"] and saved["rows"][1]["top1_error"] == 90.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fgsm.csv", "fgsm.json"]


def test_check_range_names_the_parameter():
    assert params.check_range("n_val", 10_000, 1, 59_999) == 10_000
    with pytest.raises(ValueError, match="'n_train' must lie in \\[1, 50000\\], got 50001"):
        params.check_range("n_train", 50_001, 1, 50_000)
