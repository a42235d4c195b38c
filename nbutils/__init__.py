"""nbutils: attack kernels, data, models and reporting behind the adversarial-robustness book.

Modules by concept, ground floor first:

* ``batching`` (devices, train/eval modes, batch slices, the one batch loop ``run_batched``),
  ``checks`` (argument checks at the public entry points), ``files`` (the checkout's root, atomic
  writes, file and tensor digests, cache entries);
* ``data`` (datasets, checksums, downloads, splits), ``models`` (classifiers that own their
  normalisation, the MNIST nets);
* ``attacks`` (the attack contract: FGSM and its eps sweep, PGD, C&W-L2; ``attacks.get``),
  ``patch`` (the adversarial patch), ``train`` (training on device tensors, a cache of trained nets),
  siblings that share only the ground floor;
* ``defences`` (defensive distillation), ``metrics`` (accuracy, accuracy under attack, gradient
  masking, Wilson intervals; ROC, AUC and DeLong's interval of a detector's AUC);
* ``em`` (batched EM kernels over a leading mixture dimension; imports nothing from the package),
  ``gmm`` (scikit-learn's Gaussian mixture in torch, and one mixture per group in one batched EM),
  ``detect`` (I-defender: hidden states, the per-class detector's score and rejection rule, its
  evaluation against an attack, the attacker who knows it, the choice of mixture);
* ``plots``, ``report`` (provenance, tidy results, paper-vs-run tables), ``params`` (profiles),
  ``chapter`` (the run helper a chapter calls once), ``paper`` (the papers' published numbers),
  ``sweep`` (grids of chapter runs on Dask: resumable, aggregated).
"""
__version__ = "0.1.0"
