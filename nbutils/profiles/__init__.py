"""Each page's declaration (:class:`nbutils.params.Page`): its parameters, profiles and agreements, in
one module per page. :data:`PAGES` holds them by notebook name."""
from . import (adversarial_patch, defensive_distillation, evaluating_defences, fgsm_imagenet, gmm_detection,
               mixed_batch_training, sweeps)

PAGES = {module.PAGE.name: module.PAGE for module in (fgsm_imagenet, adversarial_patch, defensive_distillation,
                                                      mixed_batch_training, gmm_detection, evaluating_defences,
                                                      sweeps)}
