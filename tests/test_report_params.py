"""Results with provenance, paper-vs-run tables, chapter parameter checks."""
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from nbutils import chapter, params, report

ROOT = Path(__file__).resolve().parents[1]

PAGE = params.Page("99_settle", profiles={"paper": "full", "smoke": "small"}, parameters=[
    params.param("models", list, "model names", ["resnet101"], params.Rule(choices=["resnet101", "efficientnet_lite0"],
                                                                          element=str), smoke=["efficientnet_lite0"]),
    params.param("epsilons", list, "eps", [0.01, 0.02], params.PIXEL_EPS, smoke=[0.02]),
    params.param("batch_size", int, "batch", 32, params.COUNT, smoke=4),
    params.param("download_weights", bool, "fetch", False),
    params.param("seed", int, "seed", 0, params.Rule(low=0)),
    params.param("device", str, "device", "auto", smoke="cpu"),
    params.param("results_dir", str, "results", ""),
    params.param("cache_dir", str, "cache", "")])


def test_settle_fills_nones_from_the_profile_and_keeps_overrides():
    cfg = PAGE.settle("smoke", dict(models=None, epsilons=[0.1, 1], batch_size=None))
    assert cfg.profile == "smoke" and cfg.models == ["efficientnet_lite0"] and cfg.epsilons == [0.1, 1]
    assert cfg.batch_size == 4 and cfg.device == "cpu"


@pytest.mark.parametrize("given,error,word", [
    ({"batch_size": "32"}, TypeError, "batch_size"), ({"batch_size": 3.5}, TypeError, "batch_size"),
    ({"batch_size": True}, TypeError, "batch_size"), ({"epsilons": 0.02}, TypeError, "epsilons"),
    ({"download_weights": 1}, TypeError, "download_weights"), ({"model": ["x"]}, ValueError, "did you mean 'models'"),
    ({"epsilons": [0.1, 2.0]}, ValueError, r"'epsilons\[1\]'"), ({"batch_size": 0}, ValueError, "'batch_size'"),
])
def test_settle_rejects_bad_parameters_by_name(given, error, word):
    with pytest.raises(error, match=word):
        PAGE.settle("paper", given)


def test_settle_rejects_an_unknown_profile_and_a_declaration_with_a_stray_profile():
    with pytest.raises(ValueError, match="profile"):
        PAGE.settle("fast", {})
    with pytest.raises(ValueError, match="unknown profiles"):
        params.Page("bad", profiles={"paper": ""}, parameters=[params.param("n", int, "n", 1, fast=2)])


def test_an_agreement_names_every_parameter_it_involves():
    cfg = SimpleNamespace(n_attack=600, n_test=500)
    with pytest.raises(ValueError, match="'n_attack', 'n_test' disagree: n_attack must lie in \\[1, 500\\], got 600"):
        params.check_within(cfg, "n_attack", 1, cfg.n_test, ["n_test"])


def test_the_parameters_cell_lists_each_parameter_with_its_type_and_help():
    cell = PAGE.parameters_cell()
    assert 'profile: str = os.environ.get("NBUTILS_PROFILE", "paper")  # "paper" (full) | "smoke" (small)' in cell
    assert "batch_size: int = None" in cell and cell.splitlines()[-1].startswith("cache_dir: str = None")


def test_injected_reads_the_names_of_papermills_parameters_cell():
    namespace = {"In": ["", "# Parameters\nprofile = \"smoke\"\nn_train = 10\n", "x = 1"], "n_train": 10, "x": 1}
    assert params.injected(namespace) == {"profile": None, "n_train": 10}  # profile: not in this namespace
    assert params.injected({"x": 1}) == {}


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
    assert saved["provenance"]["cpu"]["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert saved["provenance"]["cpu"]["threads"] == torch.get_num_threads() and saved["provenance"]["cpu"]["model"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fgsm.csv", "fgsm.json"]


PAGE_99 = params.Page("99_settle", profiles={"smoke": "small"}, cache=None, parameters=[
    params.param("seed", int, "seed", 3, params.Rule(low=0)), params.param("device", str, "device", "cpu"),
    params.param("results_dir", str, "results", ""), params.param("cache_dir", str, "cache", ""),
    params.param("epsilons", list, "eps", [0.1], params.PIXEL_EPS)])


def test_chapter_start_settles_each_parameter_once_and_rejects_bad_ones():
    namespace = {"profile": "smoke", "seed": None, "device": None, "results_dir": None, "cache_dir": None,
                 "epsilons": [0.5], "unrelated": object()}
    run = chapter.start(PAGE_99, {**namespace, "results_dir": "/tmp/nbutils-99"})
    assert run.cfg.seed == 3 and run.cfg.epsilons == [0.5] and run.device.type == "cpu" and run.cache is None
    assert run.results == Path("/tmp/nbutils-99")
    with pytest.raises(TypeError, match="seed"):
        chapter.start(PAGE_99, {**namespace, "seed": "1"})
    with pytest.raises(ValueError, match="device 'gpu'"):
        chapter.start(PAGE_99, {**namespace, "device": "gpu"})
    with pytest.raises(ValueError, match="profile"):
        chapter.start(PAGE_99, {**namespace, "profile": "fast"})


def test_a_rerun_writes_results_and_caches_outside_tracked_files_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv(chapter.RESULTS_ENV, raising=False)
    monkeypatch.delenv(chapter.CACHE_ENV, raising=False)
    namespace = {"profile": "smoke", "seed": None, "device": None, "results_dir": None, "cache_dir": None, "epsilons": None}
    rerun = dataclasses.replace(PAGE_99, name="99_rerun", cache="models")
    run = chapter.start(rerun, namespace)
    try:
        for folder in (run.results, run.cache):
            assert folder.is_relative_to(ROOT / "runs")
            probe = folder / "probe.csv"
            probe.write_text("x\n")
            ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT).returncode == 0
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(probe)], cwd=ROOT,
                                     capture_output=True).returncode == 0
            probe.unlink()
            assert ignored and not tracked
    finally:
        shutil.rmtree(run.results, ignore_errors=True)
    monkeypatch.setenv(chapter.RESULTS_ENV, str(tmp_path))  # the committed runs' explicit choice
    assert chapter.start(rerun, namespace).results == tmp_path / "smoke" / "99_rerun"


def test_provenance_keeps_the_commit_read_at_the_start():
    run = chapter.start(dataclasses.replace(PAGE_99, name="99_commit"), {"profile": "smoke", "results_dir": "/tmp/nbutils-99"})
    run.commit = "abc123"  # as read when the run started, before it wrote anything
    record = run.provenance(models={"m": 1})
    assert record["git_commit"] == "abc123" and record["chapter"] == "99_commit" and record["seed"] == 3
    assert record["parameters"]["epsilons"] == [0.1] and record["folders"]["results"] == "/tmp/nbutils-99"


def test_the_commit_is_dirty_when_code_changes_and_not_when_a_run_rewrites_committed_results(monkeypatch, tmp_path):
    from nbutils import report
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for path in ("_toc.yml", "nbutils/code.py", "results/cpu/99/table.csv"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(git + command, cwd=tmp_path, check=True)
    monkeypatch.delenv("NBUTILS_GIT_COMMIT", raising=False)
    monkeypatch.setattr(report, "project_root", lambda: tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "results/cpu/99/table.csv").write_text("1\n")  # a sweep's earlier run rewrote a committed table
    assert report.git_commit() == head
    (tmp_path / "nbutils/code.py").write_text("1\n")
    assert report.git_commit() == head + "+dirty"


def test_displayed_paths_name_no_machine_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(chapter.CACHE_ENV, str(tmp_path))
    assert chapter.display_path(tmp_path / "models") == "$NBUTILS_CACHE/models"
    assert chapter.display_path(ROOT / "results" / "paper") == "results/paper"


def test_a_resumable_step_runs_once_and_is_read_back_equal(tmp_path, capsys):
    run = chapter.ChapterRun("99_resume", SimpleNamespace(profile="smoke", seed=0), torch.device("cpu"), tmp_path / "r",
                             tmp_path / "c", 0.0, None)
    (tmp_path / "c").mkdir()
    calls = []

    def step():
        calls.append(1)
        return {"t": pd.DataFrame({"eps": [0.0, 0.1], "n": [3, 4], "model": ["a", "b"]})}

    first = run.resumable("m1", {"eps": [0.1]}, step)
    second = run.resumable("m1", {"eps": [0.1]}, step)
    assert len(calls) == 1 and "finished in an earlier run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first["t"], second["t"])
    run.resumable("m1", {"eps": [0.2]}, step)  # other settings: another entry
    assert len(calls) == 2


def test_deterministic_algorithms_switch_on_and_off():
    chapter.deterministic_algorithms(True)
    try:
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        chapter.deterministic_algorithms(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_the_packaged_measured_runs_are_read_from_the_committed_results():
    from nbutils.files import project_root
    assert json.loads(report.MEASURED_FILE.read_text()) == report.measured_runs(project_root() / "results")
    line = report.measured_run("01_fgsm_imagenet", "offline", "cpu")
    assert line.startswith("the committed run took") and "peak memory" in line
    assert report.measured_run("01_fgsm_imagenet", "paper", "cuda") is None


def test_warnings_in_a_chapter_name_files_relative_to_the_checkout_or_their_package():
    from nbutils.files import project_root
    inside = chapter.portable_formatwarning("m", UserWarning, str(project_root() / "nbutils" / "detect.py"), 5)
    assert inside.startswith("nbutils/detect.py:5: UserWarning: m")
    installed = chapter.portable_formatwarning("m", UserWarning, "/opt/py/lib/site-packages/sklearn/x.py", 7)
    assert installed.startswith("sklearn/x.py:7:")


def test_view_moves_constant_columns_to_the_caption_and_shows_intervals():
    import re

    table = pd.DataFrame({"model": ["m", "m"], "eps": [0.005, 0.02], "error": [20.7, 55.0], "error_low": [18.3, 51.9],
                          "error_high": [23.3, 58.1], "n_images": [1000, 1000], "gap": [float("nan")] * 2})
    page = report.view(table, intervals=["error"], digits=1, caption="Table X", formats={"eps": "{:g}"}).to_html()
    assert re.findall(r"<caption>(.*?)</caption>", page) == ["Table X; model: m; n images: 1000"]  # headers as words
    assert [h.strip() for h in re.findall(r"<th[^>]*>([^<]*)</th>", page)] == ["eps", "error"]  # no index, no empty gap
    assert re.findall(r"<td[^>]*>([^<]*)</td>", page) == ["0.005", "20.7 [18.3, 23.3]", "0.02", "55.0 [51.9, 58.1]"]
    assert page == report.view(table, intervals=["error"], digits=1, caption="Table X",
                               formats={"eps": "{:g}"}).to_html()  # the same table, the same HTML
    with pytest.raises(ValueError, match="error_high"):
        report.view(table.drop(columns="error_high"), intervals=["error"])


def test_stack_rates_gives_one_row_per_rate_with_its_own_bounds():
    table = pd.DataFrame({"eps": [0.01], "top1": [80.0], "top1_low": [77.0], "top1_high": [83.0], "top5": [60.0],
                          "top5_low": [57.0], "top5_high": [63.0]})
    long = report.stack_rates(table, {"top1": "top-1", "top5": "top-5"})
    assert long.to_dict("records") == [{"eps": 0.01, "value": 80.0, "low": 77.0, "high": 83.0, "rate": "top-1"},
                                       {"eps": 0.01, "value": 60.0, "low": 57.0, "high": 63.0, "rate": "top-5"}]


def test_view_shows_counts_without_decimals_even_beside_missing_values():
    import re

    table = pd.DataFrame({"model": ["a", "b"], "n_images": [1000.0, float("nan")], "error": [20.25, 30.5]})
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", report.view(table).to_html())
    assert cells == ["a", "1000", "20.25", "b", "–", "30.50"]


def test_view_handles_an_empty_table_missing_bounds_html_and_duplicate_columns():
    import re

    empty = report.view(pd.DataFrame({"model": [], "error": []}), caption="none").to_html()
    assert [h.strip() for h in re.findall(r"<th[^>]*>([^<]*)</th>", empty)] == ["model", "error"]
    table = pd.DataFrame({"name": ["<b>x</b>", "y"], "error": [0.5, 0.25], "error_low": [float("nan"), 0.2],
                          "error_high": [0.7, 0.3]})
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", report.view(table, intervals=["error"]).to_html())
    assert cells == ["&lt;b&gt;x&lt;/b&gt;", "0.50", "y", "0.25 [0.20, 0.30]"]  # escaped; no half-interval
    with pytest.raises(ValueError, match="duplicate"):
        report.view(pd.DataFrame([[1, 2]], columns=["a", "a"]))


def test_view_shows_fractions_as_percent_bounds_included_and_leaves_the_table_alone():
    import re

    table = pd.DataFrame({"target": ["a", "b"], "top1": [0.5, 0.125], "top1_low": [0.4, 0.1], "top1_high": [0.6, 0.2]})
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", report.view(table, intervals=["top1"], percent=["top1"], digits=1).to_html())
    assert cells == ["a", "50.0 [40.0, 60.0]", "b", "12.5 [10.0, 20.0]"]
    assert table["top1"].tolist() == [0.5, 0.125]
    with pytest.raises(ValueError, match="top5"):
        report.view(table, percent=["top5"])


def test_reproduction_summary_reads_the_largest_committed_profile_and_judges_by_the_interval(tmp_path):
    def write(profile, chapter, table, frame):
        folder = tmp_path / profile / chapter
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / f"{table}.csv", index=False)

    mixed = dict(model=["mixed", "normal"], images=["adversarial, stale (posts)"] * 2)
    write("smoke", "04_mixed_batch_training", "table_1_paper_vs_run", pd.DataFrame(
        {**mixed, "accuracy (paper)": [0.9, 0.1], "accuracy (run)": [0.5, 0.1], "accuracy_low": [0.4, 0.0],
         "accuracy_high": [0.6, 0.2]}))
    assert report.reproduction_summary(tmp_path).set_index("chapter").loc["4. Mixed batches", "verdict"] == "not run yet"
    write("cpu", "04_mixed_batch_training", "table_1_paper_vs_run", pd.DataFrame(
        {**mixed, "accuracy (paper)": [0.9, 0.1], "accuracy (run)": [0.5, 0.1], "accuracy_low": [0.4, 0.0],
         "accuracy_high": [0.6, 0.2]}))
    write("paper", "04_mixed_batch_training", "table_1_paper_vs_run", pd.DataFrame(
        {**mixed, "accuracy (paper)": [0.9, 0.1], "accuracy (run)": [0.88, 0.1], "accuracy_low": [0.85, 0.0],
         "accuracy_high": [0.91, 0.2]}))
    summary = report.reproduction_summary(tmp_path).set_index("chapter")
    row = summary.loc["4. Mixed batches"]
    assert (row.profile, row.run, row.verdict) == ("paper", 0.88, "reproduced")
    shutil.rmtree(tmp_path / "paper")
    row = report.reproduction_summary(tmp_path).set_index("chapter").loc["4. Mixed batches"]
    assert (row.profile, row.low, row.verdict) == ("cpu", 0.4, "not reproduced: the paper lies above")
    assert summary.loc["1. FGSM on ImageNet", "verdict"] == "not run yet" and len(summary) == 6
    write("cpu", "06_evaluating_defences", "report_card", pd.DataFrame(
        {"dataset": ["mnist", "mnist"], "defence": ["standard training", "PGD adversarial training"],
         "adaptive": [0.0, 0.46], "adaptive_low": [0.0, 0.37], "adaptive_high": [0.01, 0.56]}))
    row = report.reproduction_summary(tmp_path).set_index("chapter").loc["6. Evaluating defences"]
    assert (row.paper, row.run, row.verdict) == (0.5, 0.46, "another dataset: for scale only")  # inside, yet not "reproduced"
