"""nbutils: attack kernels, data, models and reporting behind the adversarial-robustness book.

Modules by concept: ``data`` (datasets, checksums, downloads, splits), ``models`` (classifiers
that own their normalisation, the MNIST nets), ``attacks`` (FGSM and its eps sweep, PGD, C&W-L2),
``patch`` (the adversarial patch), ``train`` (training on device tensors, distillation, a cache of
trained nets), ``metrics`` (accuracy, accuracy under attack, gradient masking), ``plots``,
``report`` (provenance, tidy results, paper-vs-run tables), ``params`` (chapter profiles),
``files`` (atomic writes and cache entries), ``paper`` (the papers' published numbers).
"""
__version__ = "0.1.0"
