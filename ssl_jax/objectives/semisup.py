"""Semi-supervised contrastive pretraining: a self-supervised objective plus two
terms that use the few labels while pretraining.

For a batch with backbone features h_i (every view of every item, i = 1..M),
labels y_i (-1 = unlabelled) and the base objective's loss L_base
(``objective.kw.base``: "simclr" or "dino"):

    L = L_base + w_ce * L_ce + w_corr * L_corr

    L_ce   = mean over i with y_i >= 0 of  -log softmax(W h_i + b)[y_i]
             (a linear classifier on the representation, trained jointly;
             gradients reach the backbone)
    L_corr = mean over ordered pairs (i, j), i != j, y_i = y_j >= 0, of (1 - rho(h_i, h_j))
             rho = Pearson correlation of the two feature vectors over their dimensions

``w_ce`` and ``w_corr`` are ``objective.kw.ce_weight`` and ``corr_weight``; a
term whose weight is 0 is not computed, so with both at 0 this is exactly the
base objective. Labelled items are few, so the config draws
``pretrain.labelled_per_batch`` rows of every batch from them.
"""

import importlib

import jax

from ssl_jax import losses
from ssl_jax.models.heads import LinearClassifier


class Objective:
    def __init__(self, config, *, num_classes: int = 0):
        kw = config.objective.kw
        if kw.base not in ("simclr", "dino"):
            raise ValueError(f"objective.kw.base must be 'simclr' or 'dino', got {kw.base!r}")
        if num_classes < 2:
            raise ValueError(f"semisup needs a labelled dataset (>= 2 classes), got {num_classes}")
        self.base = importlib.import_module(f"ssl_jax.objectives.{kw.base}").Objective(config)
        self.views = self.base.views
        self.ce_weight, self.corr_weight = float(kw.ce_weight), float(kw.corr_weight)
        self.classifier = LinearClassifier(num_classes)

    def init(self, rng, batch):
        k_base, k_cls = jax.random.split(rng)
        variables = dict(self.base.init(k_base, batch))
        base_params = variables.pop("params")
        features = self.base.encode(base_params, variables, batch[self.views[0]])
        classifier = self.classifier.init(k_cls, features)["params"]
        return {"params": {"base": base_params, "classifier": classifier}, **variables}

    def loss(self, params, model_state, batch, rng, train=True):
        loss, metrics, new_state, features = self.base.forward(
            params["base"], model_state, batch, rng, train
        )
        metrics = dict(metrics, base_loss=loss)
        # features are view-major: [view 0 items, view 1 items, ...]
        labels = jax.numpy.tile(batch["label"], features.shape[0] // batch["label"].shape[0])
        if self.ce_weight:
            logits = self.classifier.apply({"params": params["classifier"]}, features)
            ce = losses.softmax_xent(logits, labels)
            loss = loss + self.ce_weight * ce
            metrics["ce_loss"] = ce
        if self.corr_weight:
            corr_loss, mean_corr = losses.same_class_correlation(features, labels)
            loss = loss + self.corr_weight * corr_loss
            metrics["same_class_corr"] = mean_corr
        return loss, (metrics, new_state)

    def mask_grads(self, grads, step):
        if not hasattr(self.base, "mask_grads"):
            return grads
        return {**grads, "base": self.base.mask_grads(grads["base"], step)}

    def after_step(self, state):
        # The base sees its own parameters (a DINO teacher follows them).
        inner = self.base.after_step(state.replace(params=state.params["base"]))
        return inner.replace(params=state.params)

    def encode(self, params, model_state, images):
        return self.base.encode(params["base"], model_state, images)

    def backbone_variables(self, params, model_state):
        return self.base.backbone_variables(params["base"], model_state)
