"""The sweeps page: parameters and profiles."""
from ..params import ANY, PIXEL_EPS, POSITIVE, Page, Rule, param

PAGE = Page(
    "sweeps",
    profiles={"paper": "the spec files as written", "smoke": "tiny runs of the same sweeps, minutes on 2 CPU cores"},
    parameters=[
        param("seeds", list, "seeds of chapter 3's grid", [0, 1, 2],
              Rule(low=0, element=int), smoke=[0, 1]),
        param("temperatures", list, "distillation temperatures of chapter 3's grid", [1.0, 100.0], POSITIVE),
        param("epsilons", list, "FGSM eps of chapter 1's grid, one run each",
              [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05], PIXEL_EPS, smoke=[0.01, 0.05]),
        param("n_images", int, "stand-in images per chapter 1 run", 200, Rule(1, 1000), smoke=8),
        param("workers", int, "workers of the local Dask cluster (0: one per GPU, else one per 4 CPU cores)", 2, Rule(low=0)),
        param("scheduler", str, 'address of a running Dask scheduler; "": a LocalCluster on this machine', "", ANY),
        param("device", str, '"auto" | "cpu" | "cuda" (of every run)', "cpu", ANY),
        param("sweeps_dir", str, 'the runs\' folders; "": $NBUTILS_CACHE/sweeps/<profile>, else runs/sweeps/<profile> (git-ignored)', "", ANY),
        param("data_dir", str, "a data root searched before NBUTILS_DATA and data/", "", ANY),
        param("results_dir", str, "tables and figures; empty: $NBUTILS_RESULTS/<profile>/sweeps, else "
                                  "runs/results/<profile>/sweeps", "", ANY),
    ],
    expected={("paper", "cpu"): "about 30 min on 2 CPU cores (two workers)", ("smoke", "cpu"): "about 2 min on 2 CPU cores"},
)
