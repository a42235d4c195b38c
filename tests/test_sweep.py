"""Sweeps: the spec, run identity, a 2-worker LocalCluster on the loopback interface, resuming,
failures, a killed worker, concurrent sweeps, aggregation, and a real chapter grid at ``smoke``.

Most tests run ``tests/notebooks/sweep_probe.ipynb``, a notebook of a few lines that writes two
tables (``probe``: y = x * seed and x + 1 for k = 1, 2; ``echo``: x), refuses x < 0, can sleep, and
appends "<x> <seed> <worker pid>" to a log file when it starts, so the tests can count executions.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbutils import metrics, plots, sweep

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "notebooks" / "sweep_probe.ipynb"
CHAPTER_3 = ROOT / "book" / "03_defensive_distillation.ipynb"


@pytest.fixture(scope="module")
def client():
    from distributed import Client
    with sweep.local_cluster(2) as cluster, Client(cluster) as dask_client:
        yield dask_client


def probe_spec(log: Path, **spec) -> sweep.SweepSpec:
    return sweep.parse_spec({"notebook": str(PROBE), "parameters": {"log": str(log), **spec.pop("parameters", {})},
                             **spec})


def executions(log: Path) -> list[tuple[float, int, int]]:
    """(x, seed, worker pid) of every run that started, in order."""
    if not log.exists():
        return []
    return [(float(x), int(seed), int(pid)) for x, seed, pid in (line.split() for line in log.read_text().splitlines())]


# ---------------------------------------------------------------------------------------------
# The spec


def test_grid_is_the_product_of_its_lists_times_the_seeds_and_later_keys_win(tmp_path):
    spec = probe_spec(tmp_path / "log", parameters={"x": 9.0, "sleep": 0.5}, grid={"x": [1.0, 2.0, 3.0]},
                      seeds=[0, 1])
    runs = spec.runs()
    assert [(r.parameters["x"], r.parameters["seed"]) for r in runs] == [(x, s) for x in (1.0, 2.0, 3.0) for s in (0, 1)]
    assert all(r.parameters["sleep"] == 0.5 for r in runs)
    assert len({r.name for r in runs}) == 6


def test_explicit_runs_and_no_grid():
    listed = sweep.parse_spec({"notebook": str(PROBE), "runs": [{"x": 1.0}, {"x": 5.0, "seed": 3}]}).runs()
    assert [r.parameters for r in listed] == [{"x": 1.0}, {"x": 5.0, "seed": 3}]
    assert [r.parameters for r in sweep.parse_spec({"notebook": str(PROBE)}).runs()] == [{}]


def test_run_name_is_a_digest_of_notebook_and_parameters_in_any_key_order():
    a = sweep.Run(PROBE, {"x": 1.0, "seed": 0})
    assert a.name == sweep.Run(PROBE, {"seed": 0, "x": 1.0}).name
    assert a.name != sweep.Run(PROBE, {"x": 1.0, "seed": 1}).name
    assert a.name != sweep.Run(CHAPTER_3, {"x": 1.0, "seed": 0}).name
    assert a.name.startswith("sweep_probe-") and a.notebook_id == "tests/notebooks/sweep_probe.ipynb"


@pytest.mark.parametrize("spec, message", [
    ({"notebook": str(PROBE), "grid": {"x": [1.0]}, "colour": 1}, "unknown spec key"),
    ({"grid": {"x": [1.0]}}, "'notebook' is missing"),
    ({"notebook": "nowhere.ipynb"}, "no notebook at"),
    ({"notebook": str(PROBE), "grid": {"y": [1.0]}}, "unknown parameter(s) ['y']"),
    ({"notebook": str(PROBE), "parameters": {"results_dir": "/tmp"}}, "set by the sweep itself"),
    ({"notebook": str(PROBE), "grid": {"x": []}}, "non-empty list"),
    ({"notebook": str(PROBE), "grid": {"x": 1.0}}, "non-empty list"),
    ({"notebook": str(PROBE), "grid": {"x": [1.0]}, "runs": [{"x": 2.0}]}, "not both"),
    ({"notebook": str(PROBE), "runs": []}, "'runs' must be a non-empty list"),
    ({"notebook": str(PROBE), "runs": [{"z": 1}]}, "unknown parameter(s) ['z']"),
    ([1, 2], "must be a mapping"),
])
def test_bad_specs_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError) as err:
        sweep.parse_spec(spec)
    assert message in str(err.value)


def test_seeds_must_be_integers():
    with pytest.raises(TypeError, match="'seeds' must be a list of integers"):
        sweep.parse_spec({"notebook": str(PROBE), "seeds": [0, 1.5]})


def test_load_spec_reads_yaml_relative_to_the_file_and_merges_overrides(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(f"notebook: {os.path.relpath(PROBE, tmp_path)}\nparameters: {{sleep: 2.0, x: 4.0}}\n"
                    "grid: {seed: [0, 1, 2]}\n")
    spec = sweep.load_spec(path, overrides={"parameters": {"sleep": 0.0}, "grid": {"seed": [7]}})
    assert spec.notebook == PROBE and [r.parameters for r in spec.runs()] == [{"sleep": 0.0, "x": 4.0, "seed": 7}]
    (tmp_path / "bad.yaml").write_text("notebook: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        sweep.load_spec(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="no sweep spec"):
        sweep.load_spec(tmp_path / "absent.yaml")


def test_the_command_refuses_a_bad_spec_with_one_line(tmp_path):
    (tmp_path / "spec.yaml").write_text(f"notebook: {PROBE}\ngrid: {{nope: [1]}}\n")
    result = subprocess.run([sys.executable, "-m", "nbutils.sweep", str(tmp_path / "spec.yaml"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "['nope']" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Running on a 2-worker LocalCluster


def test_a_sweep_runs_every_point_records_a_failure_and_aggregates_with_parameters_as_columns(client, tmp_path):
    log = tmp_path / "log"
    spec = probe_spec(log, grid={"x": [1.0, -1.0, 2.0]}, seeds=[0, 3])
    result = sweep.run_sweep(spec, out=tmp_path / "out", client=client, progress=False)

    states = result.status.set_index(result.status.parameters.map(lambda p: (p["x"], p["seed"])))["state"]
    assert states.to_dict() == {(1.0, 0): "done", (1.0, 3): "done", (-1.0, 0): "failed", (-1.0, 3): "failed",
                                (2.0, 0): "done", (2.0, 3): "done"}
    failed = result.status[result.status.state == "failed"].iloc[0]
    assert failed.error == "ValueError: parameter 'x' must be >= 0, got -1.0"
    partial = json.loads((Path(failed.folder) / "notebook.ipynb").read_text())  # the partial notebook is kept
    assert any(o.get("ename") == "ValueError" for c in partial["cells"] for o in c.get("outputs", []))

    probe = result["probe"]
    assert list(probe.columns[:4]) == ["run", "log", "x", "seed"] and {"device", "git_commit"} <= set(probe.columns)
    expected = sorted((x, s, k, y) for x in (1.0, 2.0) for s in (0, 3) for k, y in ((1, x * s), (2, x + 1.0)))
    assert sorted(probe[["x", "seed", "k", "y"]].itertuples(index=False, name=None)) == expected
    assert result["echo"].pipe(lambda t: (t["x"] == t["param_x"]).all())  # a clashing name gets param_
    assert (result["echo"].batch.astype(str) == "1").all()  # the kernels know they are batch runs
    assert sorted(result["runs"].state) == ["done"] * 4 + ["failed"] * 2

    tables = tmp_path / "out" / "tables"
    for name in ("probe", "echo", "runs"):
        from_csv, from_parquet = pd.read_csv(tables / f"{name}.csv"), pd.read_parquet(tables / f"{name}.parquet")
        assert from_csv.shape == from_parquet.shape == result[name].shape
    status_file = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert status_file["counts"] == {"done": 4, "failed": 2} and len(status_file["runs"]) == 6


def test_a_rerun_skips_finished_runs_retries_failed_ones_and_a_grown_grid_runs_only_the_new(client, tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    sweep.run_sweep(probe_spec(log, grid={"x": [1.0, -1.0]}), out=out, client=client, progress=False)
    finished = sweep.run_folder(out, sweep.Run(PROBE, {"log": str(log), "x": 1.0}))
    stamp = (finished / "status.json").stat().st_mtime_ns
    assert sorted(x for x, _, _ in executions(log)) == [-1.0, 1.0]

    again = sweep.run_sweep(probe_spec(log, grid={"x": [1.0, -1.0, 3.0]}), out=out, client=client, progress=False)
    assert sorted(x for x, _, _ in executions(log)) == [-1.0, -1.0, 1.0, 3.0]  # 1.0 not repeated
    assert (finished / "status.json").stat().st_mtime_ns == stamp
    assert sorted(zip(again.status.state, again.status.skipped)) == [("done", False), ("done", True), ("failed", False)]
    assert sorted(again["echo"].x) == [1.0, 3.0]


def test_a_killed_worker_loses_no_finished_run_and_its_run_completes_on_another(client, tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    spec = probe_spec(log, runs=[{"x": 1.0}, {"x": 2.0, "sleep": 5.0}, {"x": 3.0}])
    killed = []

    def kill_the_slow_run():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for x, _, pid in executions(log):
                if x == 2.0:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.1)

    threading.Thread(target=kill_the_slow_run, daemon=True).start()
    result = sweep.run_sweep(spec, out=out, client=client, progress=False)
    assert killed, "the slow run never started"
    assert (result.status.state == "done").all(), result.status
    runs = executions(log)
    assert [x for x, _, _ in runs].count(2.0) == 2 and [x for x, _, _ in runs].count(1.0) == 1
    retried = next(pid for x, _, pid in runs[::-1] if x == 2.0)
    assert retried != killed[0]
    assert sorted(result["echo"].x) == [1.0, 2.0, 3.0]
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker for the next tests


def test_two_sweeps_sharing_an_output_folder_execute_each_run_once(client, tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    specs = [probe_spec(log, grid={"x": [1.0, 2.0]}, parameters={"sleep": 1.0}),
             probe_spec(log, grid={"x": [2.0, 1.0, 4.0]}, parameters={"sleep": 1.0})]
    results = [None, None]

    def run(i):
        results[i] = sweep.run_sweep(specs[i], out=out, client=client, progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(x for x, _, _ in executions(log)) == [1.0, 2.0, 4.0]
    assert all((r.status.state == "done").all() for r in results)


def test_a_lock_held_by_a_dead_process_is_released(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from nbutils import sweep\n"
                               f"with sweep.folder_lock(Path({str(tmp_path)!r})):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    acquired = threading.Event()
    threading.Thread(target=lambda: (sweep.folder_lock(tmp_path).__enter__(), acquired.set()), daemon=True).start()
    assert acquired.wait(10)


def test_a_multi_gpu_local_cluster_pins_one_gpu_per_worker(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cluster_class = sweep._pinned_gpu_cluster_class()
    with cluster_class(n_workers=0, host="127.0.0.1", dashboard_address=":0", processes=True) as cluster:
        pinned = []
        for _ in range(3):
            (name, spec), = cluster.new_worker_spec().items()
            cluster.worker_spec[name] = spec
            pinned.append(spec["options"]["env"]["CUDA_VISIBLE_DEVICES"])
        cluster.worker_spec.clear()
    assert pinned == ["0", "1", "0"]


# ---------------------------------------------------------------------------------------------
# Intervals over seeds


def test_mean_interval_is_the_student_t_interval_over_each_group():
    from scipy import stats
    table = pd.DataFrame({"T": [1, 1, 1, 100, 100, 7], "v": [0.1, 0.3, 0.2, 0.9, 0.5, 0.4]})
    summary = metrics.mean_interval(table, "T", "v").set_index("T")
    low, high = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem([0.1, 0.3, 0.2]))
    assert summary.loc[1, "n"] == 3 and np.isclose(summary.loc[1, "low"], low) and np.isclose(summary.loc[1, "high"], high)
    assert np.isclose(summary.loc[100, "mean"], 0.7) and np.isnan(summary.loc[7, "low"])
    with pytest.raises(ValueError, match="'w' is not a column"):
        metrics.mean_interval(table, "T", "w")


def test_sweep_curves_draws_each_lines_mean_and_its_seeds_wilson_envelope():
    from nbutils.metrics import wilson_interval
    table = pd.DataFrame({"T": [1, 1, 10, 10] * 2, "v": [0.1, 0.2, 0.5, 0.6, 0.2, 0.3, 0.6, 0.8], "n": [100] * 8,
                          "model": ["a"] * 4 + ["b"] * 4})
    fig = plots.sweep_curves(table, x="T", y="v", total="n", hue="model", logx=True)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2 and ax.get_xscale() == "log"
    assert np.allclose(ax.lines[0].get_ydata(), [0.15, 0.55])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.min(), wilson_interval(10, 100)[0]) and band.max() <= 1  # never below 0 or above 1


# ---------------------------------------------------------------------------------------------
# A real chapter


@pytest.mark.slow
def test_a_chapter_grid_at_smoke_runs_on_two_workers_aggregates_and_resumes(client, tmp_path):
    tiny = {"profile": "smoke", "n_train": 500, "n_val": 100, "n_test": 100, "n_attack": 50, "pgd_steps": 2,
            "n_seeds": 1, "l2_budgets": [2.0], "l2_steps": 2, "n_l2": 20, "sweep_temperatures": [1.0],
            "cache_dir": str(tmp_path / "cache")}
    spec = sweep.parse_spec({"notebook": str(CHAPTER_3), "parameters": tiny, "grid": {"temperature": [1.0, 100.0]}})
    result = sweep.run_sweep(spec, out=tmp_path / "out", client=client, progress=False)
    assert (result.status.state == "done").all(), result.status.error.tolist()
    masking = result["gradient_masking"]
    assert sorted(masking.temperature.unique()) == [1.0, 100.0] and len(masking) == 8
    teachers = masking[masking.model.str.startswith("teacher")]
    assert sorted(teachers.model) == ["teacher (trained at T = 1)", "teacher (trained at T = 100)"]
    assert (result["runs"].device == "cpu").all()
    again = sweep.run_sweep(spec, out=tmp_path / "out", client=client, progress=False)
    assert again.status.skipped.all()
    pd.testing.assert_frame_equal(again["gradient_masking"], masking)


@pytest.mark.slow
def test_the_sweeps_page_runs_under_nbval_at_smoke_and_gathers_both_sweeps(tmp_path):
    env = {**os.environ, "NBUTILS_PROFILE": "smoke", "NBUTILS_RESULTS": str(tmp_path / "results"),
           "NBUTILS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                             "--nbval-current-env", str(ROOT / "book" / "sweeps.ipynb")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:]
    produced = tmp_path / "results" / "smoke" / "sweeps"
    masking = pd.read_csv(produced / "masking_over_seeds.csv")
    assert sorted(masking.temperature.unique()) == [1.0, 100.0] and (masking.n_seeds == 2).all()
    assert (pd.read_csv(produced / "runs_03.csv").state == "done").all()
    eps_grid = pd.read_csv(produced / "fgsm_eps_grid.csv")
    assert sorted(eps_grid.eps.unique()) == [0.01, 0.05] and set(eps_grid.convention) == {"pixel", "normalised"}
