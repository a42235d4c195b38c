#!/usr/bin/env bash
# Every benchmark script in one run, at the sizes of benchmarks/RESULTS.md's rows for that device:
#   benchmarks/run_all.sh [mnist|imagenet|all] [cpu|cuda]
# "mnist" needs MNIST, "imagenet" the imagenet-sample and the stand-in's weights (NBUTILS_DATA); a
# GPU machine that cannot hold both data sets at once runs the two groups separately. Each script
# prints its machine, its timings and their ratios; one that fails is reported and the rest still run.
set -uo pipefail
group=${1:-all}
device=${2:-cuda}
cd "$(dirname "$0")"
failed=0
bench() {
  echo "== $(date +%T) python3 $*"
  python3 "$@" || { echo "!! failed: $*"; failed=$((failed + 1)); }
}
if [[ $device == cuda ]]; then
  mnist_size=(--n-images 10000 --batch-size 1000); mixed_size=(--n-images 30000 --repeats 2); eval_size=(--n-images 10000 --batch-size 1000)
  imagenet_size=(--n-images 1000 --batch-size 128); sweep_size=(--n-images 512 --batch-size 64)
else
  mnist_size=(--n-images 1000 --batch-size 500); mixed_size=(--n-images 10000); eval_size=(--n-images 200)
  imagenet_size=(--n-images 128 --batch-size 64); sweep_size=(--n-images 64 --batch-size 32)
fi
if [[ $group == mnist || $group == all ]]; then
  bench pgd_step.py --device "$device" --model net "${mnist_size[@]}"
  bench pgd_step.py --device "$device" --model model_f "${mnist_size[@]}"
  bench mixed_epoch.py --device "$device" "${mixed_size[@]}"
  bench train_epoch.py --device "$device"
  bench gmm_fit.py --device "$device" --repeats 1
  bench autoattack.py --device "$device" "${eval_size[@]}"
fi
if [[ $group == imagenet || $group == all ]]; then
  bench evaluation.py --device "$device" "${imagenet_size[@]}"
  bench fgsm_sweep.py --device "$device" "${sweep_size[@]}"
  bench patch_train.py --device "$device" --determinism
fi
echo "== $(date +%T) done; $failed script(s) failed"
exit $((failed > 0))
