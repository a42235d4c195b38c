"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, arXiv:1912.00049): a
score-based random search that needs no gradient, the gradient-free member of AutoAttack.

Each query changes one random square window of the current best image, per image: for "linf" the
window's pixels move to a random vertex of the eps-ball (one sign per channel), for "l2" perturbation
mass is moved out of a second window into the first with the paper's centred-squares pattern. The
window's side follows the ``p_init`` schedule (the share of pixels it covers halves at fixed shares
of the ``n_queries`` budget), and a proposal is kept when it lowers the margin ``z_y - max_{j != y} z_j``
of the class scores (or reaches misclassification). Only images still classified correctly are
updated (masked updates); with ``drop_finished`` the fooled ones also leave the batch at each change
of the window size (about 9 host synchronisations per run), so that late queries cost only the
images still standing.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from functools import lru_cache, partial

import torch
from torch import nn

from ..batching import class_scores, model_device
from ..checks import check_choice, check_eps, check_flag, check_fraction, check_positive_int, check_seed
from .base import Attack, Kernel, register
from .losses import margin_per_image
from .pgd import NORMS, per_image_l2

#: The reference schedule: from these iterations (of 10,000, rescaled to the budget) on, the window
#: covers p_init / 2, / 4, ... of the pixels.
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_at(iteration: int, n_queries: int, p_init: float) -> float:
    """The share of pixels the window covers at ``iteration`` (0-based) of ``n_queries``."""
    rescaled = int(iteration / n_queries * 10000)
    return p_init / 2 ** sum(rescaled > start for start in SCHEDULE)


def segments(n_queries: int, p_init: float) -> list[tuple[int, float]]:
    """The runs of iterations with one window share: [(number of iterations, p)], in order."""
    shares = (p_at(i, n_queries, p_init) for i in range(n_queries))
    return [(len(list(run)), p) for p, run in itertools.groupby(shares)]


def window_side(p: float, n_pixels: int, norm: str) -> int:
    """The side of the square window covering a share p of the H x W pixels (L2: at least 3 and odd)."""
    side = max(int(round(math.sqrt(p * n_pixels))), 1)
    if norm == "l2":
        side = max(side, 3)
        side += 1 - side % 2
    return side


@lru_cache(maxsize=None)
def centred_squares(side: int, device: torch.device) -> torch.Tensor:
    """The L2 attack's (side, side) pattern on ``device``: two halves of nested centred rectangles
    weighted 1 / (k + 1)^2, of opposite signs, unit L2 norm (the reference's ``eta``). Built there
    from Python numbers, so no copy from the host."""
    def rectangles(height, width):
        delta = torch.zeros(height, width, device=device)
        top, left = height // 2, width // 2
        for k in range(max(height // 2 + 1, width // 2 + 1)):
            delta[max(top - k, 0):min(top - k + 2 * k + 1, height),
                  max(left - k, 0):min(left - k + 2 * k + 1, width)] += 1.0 / (k + 1) ** 2
        return delta / delta.norm()

    pattern = torch.cat([rectangles(side // 2, side), -rectangles(side - side // 2, side)])
    return pattern / pattern.norm()


def random_windows(batch: int, height: int, width: int, side: int, generator: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random side x side window per image, its corner drawn uniformly from [0, H - side) x [0, W - side)
    as the reference does: (mask (B, 1, H, W) bool, row offsets (B, H), column offsets (B, W)) with the
    offsets of each pixel from the window's corner."""
    corner = torch.rand(2, batch, generator=generator, device=device)
    rows = torch.arange(height, device=device) - (corner[0] * (height - side)).long()[:, None]
    cols = torch.arange(width, device=device) - (corner[1] * (width - side)).long()[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return inside[:, None], rows, cols


def random_signs(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Independent +-1 entries."""
    return torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)


def linf_init(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Vertical stripes: each column of each channel moved by +-eps, clamped to [0, 1]."""
    b, c, _, w = x.shape
    return (x + eps * random_signs((b, c, 1, w), generator, x.device)).clamp(0, 1)


def linf_proposal(x: torch.Tensor, best: torch.Tensor, eps: float, side: int, generator: torch.Generator) -> torch.Tensor:
    """One L-inf query per image: a random window of ``best`` set to x + eps * (one random sign per
    channel), clamped to [0, 1]."""
    b, c, h, w = x.shape
    inside, _, _ = random_windows(b, h, w, side, generator, x.device)
    vertex = (x + eps * random_signs((b, c, 1, 1), generator, x.device)).clamp(0, 1)
    return torch.where(inside, vertex, best)


def _placed(pattern: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, side: int,
            transposed: torch.Tensor) -> torch.Tensor:
    """``pattern`` (side, side), or its transpose where ``transposed`` (B,), pasted at each image's
    window: (B, 1, H, W), arbitrary outside the window."""
    r, c = rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]
    index = torch.where(transposed[:, None, None], c * side + r, r * side + c)
    return pattern.flatten()[index][:, None]


def _grid(size: int, side: int) -> list[int]:
    """The reference's starting offsets of the init's squares along one side: a centred run of
    ``size // side`` squares, those that fit."""
    start = max((size - 5 * side) // 2, 0)
    return [start + k * side for k in range(size // side) if start + (k + 1) * side <= size]


def l2_init(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A grid of centred-squares patterns of side H // 5 with random signs per image and channel
    (each randomly transposed), scaled to L2 norm eps, clamped to [0, 1]."""
    b, c, h, w = x.shape
    side = max(h // 5, 1)
    pattern = centred_squares(side, x.device).to(x.dtype)
    delta = torch.zeros_like(x)
    for top, left in itertools.product(_grid(h, side), _grid(w, side)):
        flip = torch.rand(b, generator=generator, device=x.device) < 0.5
        square = torch.where(flip[:, None, None, None], pattern.T, pattern)
        delta[:, :, top:top + side, left:left + side] += square * random_signs((b, c, 1, 1), generator, x.device)
    return (x + eps * delta / per_image_l2(delta).clamp_min(1e-12)[:, None, None, None]).clamp(0, 1)


def l2_proposal(x: torch.Tensor, best: torch.Tensor, eps: float, side: int, generator: torch.Generator) -> torch.Tensor:
    """One L2 query per image (the reference's): the perturbation inside a second random window is
    removed and, with the mass there and in a first window, the first window is refilled with a
    random-signed centred-squares pattern plus its old content; the whole perturbation is then
    rescaled to L2 norm eps and the image clamped to [0, 1]."""
    b, c, h, w = x.shape
    delta = best - x
    first, rows, cols = random_windows(b, h, w, side, generator, x.device)
    second, _, _ = random_windows(b, h, w, side, generator, x.device)
    in_first = delta * first
    first_norm = in_first.pow(2).sum((2, 3), keepdim=True).sqrt()                       # (B, C, 1, 1)
    room = (eps ** 2 - per_image_l2(delta).pow(2)).clamp_min(0)[:, None, None, None] / c
    windows_mass = per_image_l2(delta * (first | second)).pow(2)[:, None, None, None]
    transposed = torch.rand(b, generator=generator, device=x.device) < 0.5
    pattern = _placed(centred_squares(side, x.device).to(x.dtype), rows, cols, side, transposed)
    fresh = (pattern * random_signs((b, c, 1, 1), generator, x.device) + in_first / (first_norm + 1e-12)) * first
    fresh = fresh / (fresh.pow(2).sum((2, 3), keepdim=True).sqrt() + 1e-12) * (room + windows_mass).sqrt()
    delta = torch.where(first, fresh, torch.where(second, 0.0, delta))
    return (x + eps * delta / (per_image_l2(delta) + 1e-12)[:, None, None, None]).clamp(0, 1)


INIT = {"linf": linf_init, "l2": l2_init}
PROPOSAL = {"linf": linf_proposal, "l2": l2_proposal}


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(B,): positive while the attack has not succeeded: ``z_y - max_{j != y} z_j`` (untargeted) or
    ``max_{j != t} z_j - z_t`` (targeted)."""
    margin = margin_per_image(class_scores(model, model(x)), y)
    return margin if targeted else -margin


def _search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor, margin: torch.Tensor, *,
            iterations: int, side: int, eps: float, norm: str, targeted: bool,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``iterations`` queries of one window size: each image still standing (margin > 0) keeps its
    proposal when the margin drops. Fixed shapes, no host synchronisation."""
    for _ in range(iterations):
        proposal = PROPOSAL[norm](x, best, eps, side, generator)
        new = _margin(model, proposal, y, targeted)
        keep = (margin > 0) & (new < margin)
        best = torch.where(keep[:, None, None, None], proposal, best)
        margin = torch.where(keep, new, margin)
    return best, margin


@torch.no_grad()
def square_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                  plan: list[tuple[int, float]], targeted: bool, drop_finished: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Square Attack on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W).
    One query for the start and one per planned iteration; ``plan``: [(iterations, p)] from
    :func:`segments`. With ``drop_finished``, each segment runs only on the images still standing
    (one host synchronisation per segment); else fixed shapes throughout. Unchecked."""
    best = INIT[norm](x, eps, generator)
    margin = _margin(model, best, y, targeted)
    n_pixels = x.shape[2] * x.shape[3]
    for iterations, p in plan:
        settings = dict(iterations=iterations, side=window_side(p, n_pixels, norm), eps=eps, norm=norm,
                        targeted=targeted, generator=generator)
        if not drop_finished:
            best, margin = _search(model, x, y, best, margin, **settings)
            continue
        standing = (margin > 0).nonzero().squeeze(1)
        if standing.numel() == 0:
            break
        found, found_margin = _search(model, x[standing], y[standing], best[standing], margin[standing], **settings)
        best, margin = best.index_copy(0, standing, found), margin.index_copy(0, standing, found_margin)
    return best


@register("square", "Square")
class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020, arXiv:1912.00049), gradient-free, L-inf or L2.

    A random search on the class scores' margin with ``n_queries`` queries per image (plus one for the
    starting point): L-inf starts from vertical stripes of +-eps and each query sets a random square
    window to a random vertex of the eps-ball; L2 starts from a grid of centred-squares patterns and
    each query moves perturbation mass between two windows, keeping the L2 norm at eps (pixel units).
    The window covers a share ``p_init`` of the pixels, halved at fixed shares of the budget (the
    reference schedule, :data:`SCHEDULE`). Windows, signs and starts are drawn per image from a
    generator on the model's device seeded with ``seed``. ``targeted``: labels are target classes.
    ``drop_finished``: fooled images leave the batch at each change of the window size (about 9 host
    synchronisations per run); False keeps fixed shapes and never synchronises. ``restarts``: runs
    with seeds ``seed``, ``seed + 1``, ...: :meth:`stages` gives them to a cascade one by one; the
    function itself keeps, per image, the first run that succeeds. images: (N, C, H, W) in [0, 1];
    labels: (N,). Returns the adversarial images (N, C, H, W) on the images' device.
    """

    eps: float
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    targeted: bool = False
    drop_finished: bool = True
    seed: int = 0

    def prepare(self, model: nn.Module) -> Kernel:
        norm = check_choice(self.norm, NORMS, "norm")
        device = model_device(model)
        plan = segments(check_positive_int(self.n_queries, "n_queries"), check_fraction(self.p_init, "p_init"))
        kernels = [partial(square_kernel, model, eps=check_eps(self.eps, upper=1.0 if norm == "linf" else None),
                           norm=norm, plan=plan, targeted=check_flag(self.targeted, "targeted"),
                           drop_finished=check_flag(self.drop_finished, "drop_finished"),
                           generator=torch.Generator(device).manual_seed(check_seed(self.seed) + r))
                   for r in range(check_positive_int(self.restarts, "restarts"))]
        return kernels[0] if len(kernels) == 1 else partial(_first_success, model, kernels, self.targeted)

    def stages(self) -> list["Square"]:
        """One single-run Square per restart (seeds ``seed``, ``seed + 1``, ...), for a cascade."""
        return [dataclasses.replace(self, restarts=1, seed=self.seed + r, name=f"{self.name} [run {r + 1}]")
                for r in range(self.restarts)]


def _first_success(model: nn.Module, kernels: list[Kernel], targeted: bool, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """Each kernel in turn on the batch; each image keeps the first result that succeeds."""
    result = kernels[0](x, y)
    for kernel in kernels[1:]:
        with torch.no_grad():
            predicted = class_scores(model, model(result)).argmax(1)
        standing = predicted != y if targeted else predicted == y
        result = torch.where(standing[:, None, None, None], kernel(x, y), result)
    return result


square = Square.function
