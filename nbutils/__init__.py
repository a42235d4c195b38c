"""nbutils: attack kernels, data, models and reporting behind the adversarial-robustness book.

Modules by concept: ``data`` (datasets, checksums, downloads), ``models`` (classifiers that own
their normalisation), ``attacks`` (FGSM and its eps sweep), ``metrics``, ``plots``, ``report``
(provenance, tidy results, paper-vs-run tables), ``params`` (chapter profiles).
"""
__version__ = "0.1.0"
