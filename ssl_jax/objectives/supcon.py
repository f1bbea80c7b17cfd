"""Supervised contrastive learning on a mix of labelled and unlabelled items.

"Supervised Contrastive Learning" (Khosla et al., 2020,
https://arxiv.org/abs/2004.11362): SimCLR's network and loss, with the class
label as the positive id, so every item of the same class (in either view) is
a positive (the paper's L_out). An unlabelled item keeps a unique id and is
only its own positive, as in SimCLR; with no labels in the batch the loss is
exactly SimCLR's. Since a random pool batch holds almost no labelled items
when labels are few, the config draws ``pretrain.labelled_per_batch`` rows of
every batch from the labelled items.
"""

import jax.numpy as jnp

from ssl_jax.objectives import simclr


class Objective(simclr.Objective):
    def positive_ids(self, batch):
        labels = batch["label"]
        # Labels are >= 0; unlabelled items get distinct negative ids.
        return jnp.where(labels >= 0, labels, -1 - jnp.arange(labels.shape[0]))
