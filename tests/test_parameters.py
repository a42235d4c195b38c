"""Chapter parameters: every one has a rule, every profile keeps them, and a bad value (of each kind)
stops a chapter in its first cells, before any data is loaded, naming the parameter."""
import time

import nbformat
import papermill
import pytest

from nbutils import params
from nbutils.profiles import PAGES
from test_book import NOTEBOOKS, ROOT, parameters_cell_names


def first_cells(notebook) -> list:
    """The code cells up to the one that calls ``chapter.start`` (no data loaded yet)."""
    cells = []
    for cell in nbformat.read(notebook, 4).cells:
        if cell.cell_type == "code":
            cells.append(cell)
            if "chapter.start(" in cell.source:
                return cells
    raise AssertionError(f"{notebook.name} never calls chapter.start")


def run_first_cells(notebook, monkeypatch, tmp_path, **parameters) -> dict:
    """Execute the first cells in this process as papermill would, ``parameters`` injected after the
    parameters cell; returns the namespace."""
    monkeypatch.setenv("NBUTILS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("NBUTILS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(notebook.parent)
    from IPython.core.inputtransformer2 import TransformerManager
    namespace = {}
    for cell in first_cells(notebook):
        exec(compile(TransformerManager().transform_cell(cell.source), notebook.name, "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    return namespace


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_page_declares_its_parameters_once_and_every_profile_keeps_them(notebook):
    page = PAGES[notebook.stem]
    assert parameters_cell_names(notebook) == ["profile", *page.names]  # the cell holds what papermill injects
    assert params.stale_cells(ROOT / "book", {page.name: page}) == []   # and is written from the declaration
    setup = "".join(c.source for c in first_cells(notebook) if "parameters" not in c.metadata.get("tags", []))
    assert "PROFILES" not in setup and "check_range" not in setup and "params." not in setup
    for profile in page.profiles:  # each profile's values pass the rules and the page's agreements
        page.settle(profile, {})


def test_an_injected_name_the_page_does_not_declare_stops_it_naming_the_closest(monkeypatch, tmp_path):
    notebook = ROOT / "book" / "03_defensive_distillation.ipynb"
    with pytest.raises(ValueError, match="'epsilon': did you mean 'epsilons'"):
        run_first_cells(notebook, monkeypatch, tmp_path, profile="smoke",
                        In=["", "# Parameters\nprofile = \"smoke\"\nepsilon = 0.3\n"], epsilon=0.3)


#: One bad value of each kind, per page: (parameter, value, error, words the message must hold).
BAD = {
    "01_fgsm_imagenet": [("epsilons", ["a"], TypeError, "'epsilons[0]'"), ("epsilons", [0.1, 5.0], ValueError, "'epsilons[1]'"),
                         ("models", ["resnet9000"], ValueError, "'models[0]'"), ("n_images", -1, ValueError, "'n_images'"),
                         ("example_images", [1, 3, 4, 50], ValueError, "'example_images', 'n_images'"),
                         ("n_images", 2000, ValueError, "'n_images', 'dataset'"), ("device", "gpu", ValueError, "device")],
    "02_adversarial_patch": [("targets", ["toaster"], ValueError, "'figure_target', 'targets'"),
                             ("sizes", [32], ValueError, "'figure_size', 'sizes'"), ("sizes", [32, 300], ValueError, "'sizes[1]'"),
                             ("targets", ["tosater"], ValueError, "'targets[0]'"), ("val_fraction", 1.0, ValueError, "'val_fraction'"),
                             ("lr", "0.1", TypeError, "'lr'"), ("weights", "V1", ValueError, "'weights'")],
    "03_defensive_distillation": [("temperature", 0.0, ValueError, "'temperature'"), ("attack_eps", 5.0, ValueError, "'attack_eps'"),
                                  ("sweep_temperatures", [0], ValueError, "'sweep_temperatures[0]'"),
                                  ("figure_images", [0, 600], ValueError, "'figure_images', 'n_test'"),
                                  ("n_attack", 100_000, ValueError, "'n_attack'"), ("epochs", 0, ValueError, "'epochs'")],
    "04_mixed_batch_training": [("adversarial_fraction", 0.0, ValueError, "'adversarial_fraction'"),
                                ("craft_mode", "test", ValueError, "'craft_mode'"), ("sweep_epsilons", [0.1, -0.1], ValueError, "'sweep_epsilons[1]'")],
    "05_gmm_detection": [("datasets", ["kmnist"], ValueError, "'datasets[0]'"), ("layer", "net.relu9", ValueError, "'layer'"),
                         ("keeps", [0.95, 1.0], ValueError, "'keeps[1]'"), ("covariance_grid", ["tied"], ValueError, "'covariance_grid[0]'"),
                         ("components_grid", [1, 2.5], TypeError, "'components_grid[1]'")],
    "sweeps": [("seeds", [0, -1], ValueError, "'seeds[1]'"), ("temperatures", [1.0, 0.0], ValueError, "'temperatures[1]'"),
               ("workers", -1, ValueError, "'workers'")],
}


@pytest.mark.parametrize("case", [(page, *case) for page, cases in BAD.items() for case in cases],
                         ids=lambda c: f"{c[0]}-{c[1]}={c[2]!r}")
def test_a_bad_value_stops_the_first_cells_naming_the_parameter(case, monkeypatch, tmp_path):
    page, name, value, error, words = case
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        run_first_cells(ROOT / "book" / f"{page}.ipynb", monkeypatch, tmp_path, profile="smoke", **{name: value})


@pytest.mark.parametrize("page,bad,words", [
    ("03_defensive_distillation", {"temperature": 0}, "'temperature'"),
    ("02_adversarial_patch", {"targets": ["toaster"], "figure_target": "piggy bank"}, "'figure_target', 'targets'"),
], ids=["03-range", "02-agreement"])
def test_papermill_stops_a_bad_parameter_in_the_first_cells_within_seconds(page, bad, words, tmp_path):
    notebook = ROOT / "book" / f"{page}.ipynb"
    started = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), cwd=str(notebook.parent),
                                   parameters={"profile": "smoke", "results_dir": str(tmp_path / "results"), **bad},
                                   progress_bar=False, kernel_name="python3")
    seconds = time.perf_counter() - started
    assert words in failure.value.evalue and failure.value.ename == "ValueError"
    executed = nbformat.read(tmp_path / "out.ipynb", 4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed_at = next(i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.outputs))
    assert "chapter.start(" in code[failed_at].source  # the setup cell: nothing loaded yet
    print(f"{page}: failed in {seconds:.1f} s")
