#!/usr/bin/env bash
# Here, before a run on the lent GPU machine: put what it cannot download into git-ignored folders
# that the device tool carries (64 MiB a call, the working tree included, so MNIST and ImageNet go
# in separate calls). Nothing here is committed.
#   .whl/            the pure-Python stack papermill needs, for the machine's Python 3.12 (its image has
#                    PyTorch, timm, pandas, scikit-learn, seaborn, but no Jupyter)
#   .devdata/mnist/  MNIST's idx files (xz) and their SHA256SUMS
#   .devdata/imagenet/  the imagenet-sample mirror with its sums, and the stand-in's weights (byte-shuffled xz)
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${NBUTILS_DATA:-$(cd .. && pwd)/shared/data}
rm -rf .whl .devdata && mkdir -p .whl .devdata/mnist .devdata/imagenet
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
  papermill==2.7.0 nbclient nbformat jupyter_client jupyter_core ipykernel ipython traitlets pyzmq tornado comm \
  matplotlib-inline nest-asyncio2 fastjsonschema jsonschema jsonschema-specifications referencing rpds-py tenacity \
  entrypoints platformdirs prompt_toolkit decorator stack_data asttokens executing pure_eval pexpect ptyprocess \
  wcwidth ipython_pygments_lexers torchattacks==3.5.1
tar -C "$shared" -cJf .devdata/mnist/data.tar.xz MNIST SHA256SUMS
cp -r "$shared/imagenet-sample" "$shared/imagenet-sample.SHA256SUMS" .devdata/imagenet/
weights=$(python3 -c "from nbutils.models import standin_weights_path as p; print(p())")
cp "$(dirname "$(dirname "$weights")")/__init__.py" .devdata/imagenet/standin_init.py
python3 .ci/device/shuffled_xz.py pack "$weights" .devdata/imagenet/standin_weights.xz
sha256sum "$weights" | cut -d' ' -f1 > .devdata/imagenet/standin_weights.sha256
du -sh .whl .devdata/mnist .devdata/imagenet
