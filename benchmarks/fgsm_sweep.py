"""fgsm_sweep (one gradient per batch) against a loop of torchattacks' FGSM over the same 10 eps.

Both sides attack the same model, images and batches on the same device, and both evaluate the
adversarial images with the same inference forward; results are checked equal before timing is
reported. Prints seconds per side and the ratio ours / reference.

    python3 benchmarks/fgsm_sweep.py --model efficientnet_lite0 --n-images 64
    python3 benchmarks/fgsm_sweep.py --model resnet101 --weights random --device cuda --n-images 512
"""
from __future__ import annotations


import torch
import torchattacks

from nbutils.attacks import fgsm_sweep
from nbutils.batching import batch_slices
from nbutils.report import device_name
from timing import benchmark_arguments, best_time, imagenet_inputs

EPSILONS = [i / 255 for i in range(1, 11)]


def reference_sweep(model, images, labels, epsilons, batch_size, k=5):
    """The straightforward way: per eps, torchattacks' FGSM (a forward+backward) then evaluation."""
    device = next(model.parameters()).device
    out = torch.empty(len(epsilons), images.shape[0], k, dtype=torch.long)
    for i, eps in enumerate(epsilons):
        attack = torchattacks.FGSM(model, eps=eps)
        for s in batch_slices(images.shape[0], batch_size):
            adv = attack(images[s].to(device), labels[s].to(device))
            with torch.inference_mode():
                out[i, s] = model(adv).topk(k, dim=1).indices.cpu()
    return out


def main():
    args = benchmark_arguments(__doc__, n_images=64, batch_size=32, repeats=2).parse_args()
    device, model, images, labels = imagenet_inputs(args)

    ours_s, ours = best_time(lambda: fgsm_sweep(model, images, labels, epsilons=EPSILONS, batch_size=args.batch_size), device, args.repeats)
    ref_s, ref = best_time(lambda: reference_sweep(model, images, labels, EPSILONS, args.batch_size), device, args.repeats)
    agree = (ours.adv_topk == ref).all(-1).double().mean().item()
    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"model {model.label} ({model.weights_id}), {args.n_images} images, batch {args.batch_size}, 10 eps")
    print(f"top-5 predictions identical for {100 * agree:.2f} % of (eps, image) pairs")
    print(f"fgsm_sweep: {ours_s:.2f} s   torchattacks loop: {ref_s:.2f} s   ratio ours/reference: {ours_s / ref_s:.3f}")
    if agree < 1.0:
        raise SystemExit("results differ from the reference")


if __name__ == "__main__":
    main()
