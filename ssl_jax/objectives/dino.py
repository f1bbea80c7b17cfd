"""DINO: self-distillation with no labels.

"Emerging Properties in Self-Supervised Vision Transformers" (Caron et al.,
2021, https://arxiv.org/abs/2104.14294). A student network (backbone + DINO
head) is trained to match, on every view, the sharpened and centred output of
a teacher that sees only the two global views. The teacher is not trained by
gradients: after every optimizer step it moves to an exponential moving
average of the student, with a momentum that follows a cosine from
``momentum_teacher`` to 1 over the run. The centre (a running mean of the
teacher's outputs, momentum ``center_momentum``) is subtracted before the
teacher's softmax, which with sharpening (teacher temperature below the
student's) prevents collapse. The teacher temperature warms up linearly from
``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_steps``.

Views are 2 global crops and ``num_local_crops`` smaller local crops (pp
recipes named global1, global2, local1, ...). Everything the method carries
between steps lives in the TrainState's ``model_state``:

    teacher        {"params": ..., plus the backbone's batch_stats if it has BatchNorm}
    center         [1, out_dim]
    teacher_temp   the current teacher temperature (a schedule, set by after_step)

Evaluators use the teacher's backbone, which the paper finds slightly better
than the student's.
"""

import math

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models import get_model
from ssl_jax.models.heads import DINOHead
from ssl_jax.objectives import submodule_variables
from ssl_jax.objectives.simclr import Net  # backbone + head, the same network

METHOD_STATE = ("teacher", "center", "teacher_temp")


class Objective:
    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        self.views = ("global1", "global2") + tuple(
            f"local{i + 1}" for i in range(kw.num_local_crops)
        )
        self.student_temp = kw.student_temp
        self.teacher_temp, self.warmup_teacher_temp = kw.teacher_temp, kw.warmup_teacher_temp
        self.warmup_steps = kw.warmup_teacher_temp_steps
        self.momentum_teacher, self.center_momentum = kw.momentum_teacher, kw.center_momentum
        self.total_steps = config.pretrain.steps
        self.freeze_last_layer_steps = kw.freeze_last_layer_steps
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw),
            head=DINOHead(
                out_dim=kw.out_dim,
                hidden_dim=kw.hidden_dim,
                bottleneck_dim=kw.bottleneck_dim,
                num_layers=kw.head_layers,
                norm_last_layer=kw.norm_last_layer,
            ),
        )

    # ---------------------------------------------------------------- schedules

    def teacher_temp_at(self, step):
        """Linear warm-up from warmup_teacher_temp to teacher_temp, then constant."""
        if not self.warmup_steps:
            return jnp.asarray(self.teacher_temp, jnp.float32)
        frac = jnp.clip(step / self.warmup_steps, 0.0, 1.0)
        return self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)

    def momentum_at(self, step):
        """Cosine from momentum_teacher at step 0 to 1 at the last step."""
        frac = jnp.clip(step / max(self.total_steps, 1), 0.0, 1.0)
        return 1.0 - (1.0 - self.momentum_teacher) * (jnp.cos(math.pi * frac) + 1.0) / 2.0

    # ---------------------------------------------------------------- contract

    def init(self, rng, batch):
        variables = dict(self.net.init(rng, batch["global1"], train=False))
        out_dim = self.net.head.out_dim
        teacher = jax.tree.map(jnp.copy, variables)  # the teacher starts as the student
        variables["teacher"] = teacher
        variables["center"] = jnp.zeros((1, out_dim), jnp.float32)
        variables["teacher_temp"] = self.teacher_temp_at(0)
        return variables

    @staticmethod
    def _student_state(model_state):
        return {k: v for k, v in model_state.items() if k not in METHOD_STATE}

    def _apply(self, variables, x, train):
        """(features, logits, updated non-param collections) of one forward pass."""
        mutable = [k for k in variables if k != "params"]
        (features, logits), new = self.net.apply(variables, x, train=train, mutable=mutable)
        return features, logits, dict(new)

    def forward(self, params, model_state, batch, rng, train=True):
        """(loss, metrics, new model_state, student backbone features of the global views)."""
        del rng  # DINO's randomness is all in the augmentation
        n = batch["global1"].shape[0]
        student_state = self._student_state(model_state)
        # Views of one size go through the network together (two passes: the
        # global crops, then the local crops), as in the reference implementation.
        sizes = {}
        for v in self.views:
            sizes.setdefault(batch[v].shape[1:], []).append(v)
        student_logits, global_features = {}, None
        for names in sizes.values():
            x = jnp.concatenate([batch[v] for v in names])
            features, logits, student_state = self._apply(
                {"params": params, **student_state}, x, train
            )
            student_logits.update(zip(names, jnp.split(logits, len(names)), strict=True))
            if "global1" in names:
                global_features = features[: 2 * n]
        teacher_vars = jax.lax.stop_gradient(model_state["teacher"])
        x = jnp.concatenate([batch["global1"], batch["global2"]])
        _, t_logits, t_state = self._apply(teacher_vars, x, train)
        t_logits = jax.lax.stop_gradient(t_logits)
        center = model_state["center"]
        loss = losses.dino(
            [student_logits[v] for v in self.views],
            jnp.split(t_logits, 2),
            center,
            student_temp=self.student_temp,
            teacher_temp=model_state["teacher_temp"],
        )
        # Under jit the batch is global, so this mean spans every device.
        batch_center = jnp.mean(t_logits, axis=0, keepdims=True)
        new_center = center * self.center_momentum + batch_center * (1 - self.center_momentum)
        new_state = dict(
            student_state,
            teacher={**model_state["teacher"], **t_state},
            center=new_center,
            teacher_temp=model_state["teacher_temp"],
        )
        probs = jax.nn.softmax((t_logits - center) / model_state["teacher_temp"])
        metrics = {
            # Collapse diagnostics: a collapsed teacher has entropy 0 (one
            # prototype) or log(out_dim) (uniform).
            "teacher_entropy": jnp.mean(-jnp.sum(probs * jnp.log(probs + 1e-12), -1)),
            "teacher_temp": model_state["teacher_temp"],
        }
        return loss, metrics, new_state, global_features

    def loss(self, params, model_state, batch, rng, train=True):
        loss, metrics, new_state, _ = self.forward(params, model_state, batch, rng, train)
        return loss, (metrics, new_state)

    def mask_grads(self, grads, step):
        """No gradient to the prototypes (the head's last layer) during the first
        ``freeze_last_layer_steps``: the paper's "freeze the last layer during the
        first epoch", which it finds stabilises the start of training. (Decoupled
        weight decay still scales the raw weights; the weight normalisation of
        the prototypes cancels a uniform scaling, so they stay as they were.)"""
        if not self.freeze_last_layer_steps:
            return grads
        keep = step >= self.freeze_last_layer_steps
        last = jax.tree.map(lambda g: jnp.where(keep, g, 0.0), grads["head"]["last_v"])
        return {**grads, "head": {**grads["head"], "last_v": last}}

    def after_step(self, state):
        """EMA of the student into the teacher and the next teacher temperature.

        ``state.step`` has already counted the optimizer step just taken, so
        update k (k = 0, 1, ...) uses momentum m(k) = momentum_at(state.step - 1).
        """
        m = self.momentum_at(state.step - 1)
        ms = state.model_state
        teacher_params = jax.tree.map(
            lambda t, s: m * t + (1.0 - m) * s, ms["teacher"]["params"], state.params
        )
        new_ms = dict(
            ms,
            teacher={**ms["teacher"], "params": teacher_params},
            teacher_temp=self.teacher_temp_at(state.step),
        )
        return state.replace(model_state=new_ms)

    def encode(self, params, model_state, images):
        del params
        return self.net.apply(model_state["teacher"], images, method=Net.encode)

    def backbone_variables(self, params, model_state):
        """The teacher's backbone, as for evaluation."""
        del params
        return submodule_variables(model_state["teacher"], "backbone")
