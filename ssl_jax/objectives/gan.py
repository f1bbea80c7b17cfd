"""GAN discriminator features: a DCGAN trained adversarially; the discriminator's
penultimate layer is the representation.

"Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks" (Radford et al., 2015, https://arxiv.org/abs/1511.06434);
the discriminator's body is the configured backbone (``dcgan`` by default),
with the non-saturating generator loss of Goodfellow et al. (2014):

    L_D = softplus(-D(x)) + softplus(D(G(z)))       (= -log s(D(x)) - log(1 - s(D(G(z)))))
    L_G = softplus(-D(G(z)))                        (= -log s(D(G(z))))

Both updates happen in one jitted step: the objective's loss is
L_D(D, sg(G)) + L_G(sg(D), G), with sg the stop-gradient, so the gradient with
respect to the discriminator is exactly that of L_D and with respect to the
generator exactly that of L_G; two Adam optimizers (``d_lr``, ``g_lr``, beta1 =
0.5 as in DCGAN) live in one TrainState through ``optax.multi_transform``.
Both losses are logged; the training loop stops with a clear message when the
loss (hence either of them) is not finite. The report shows generated samples.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax.models import get_model
from ssl_jax.models.decoder import ConvDecoder
from ssl_jax.objectives import BackboneObjective


class GAN(nn.Module):
    """A generator and a discriminator (a backbone with a one-unit logit on top)."""

    image_shape: tuple[int, int, int]
    backbone: nn.Module  # the discriminator's body
    z_dim: int = 64
    width: int = 64
    up_kernel: int = 3  # the generator's sub-pixel convolutions (models/decoder.py)

    def setup(self):
        self.generator = ConvDecoder(
            self.image_shape, width=self.width, final_activation="tanh", up_kernel=self.up_kernel
        )
        self.logit = nn.Dense(1)

    def __call__(self, z, x, train: bool = False):  # for init: touches every part
        return self.discriminate(self.generate(z, train), train), self.discriminate(x, train)

    def generate(self, z, train: bool = False):
        return self.generator(z, train)

    def discriminate(self, x, train: bool = False):
        return self.logit(self.backbone(x, train=train))[:, 0]

    def encode(self, x):
        return self.backbone(x, train=False)


class Objective(BackboneObjective):
    views = ("view1",)

    # Its two Adams are its own (objective.kw), not pretrain.optimizer's.
    nonfinite_hint = (
        "Lower objective.kw.d_lr and objective.kw.g_lr (the GAN's own optimizers; "
        "pretrain.optimizer is not used)."
    )

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        d = config.data
        self.z_dim, self.g_lr, self.d_lr = kw.z_dim, kw.g_lr, kw.d_lr
        backbone = get_model(config.model.name, **config.model.kw)
        self.net = GAN(
            (d.image_size, d.image_size, d.channels),
            backbone,
            kw.z_dim,
            kw.width,
            kw.get("up_kernel", 3),
        )

    def optimizer(self, pretrain_config):
        """Two Adams in one transform: one per network, each on its own parameters."""
        del pretrain_config
        tx = optax.multi_transform(
            {
                "generator": optax.adam(self.g_lr, b1=0.5, b2=0.999),
                "discriminator": optax.adam(self.d_lr, b1=0.5, b2=0.999),
            },
            lambda params: {
                k: jax.tree.map(lambda _, g=g: g, params[k])
                for k, g in self._groups(params).items()
            },
        )
        return tx, optax.constant_schedule(self.d_lr)

    @staticmethod
    def _groups(params):
        """Generator parameters apart from the discriminator's (its body and logit)."""
        return {k: "generator" if k == "generator" else "discriminator" for k in params}

    def init(self, rng, batch):
        k_init, k_z = jax.random.split(rng)
        x = batch["view1"]
        z = jax.random.normal(k_z, (x.shape[0], self.z_dim))
        return self.net.init(k_init, z, x, train=False)

    def terms(self, params, model_state, batch, rng, train=True):
        """(L_D with the generator held fixed, L_G with the discriminator held fixed,
        new model state, metrics)."""
        x = batch["view1"]
        z = jax.random.normal(rng, (x.shape[0], self.z_dim))
        mutable = list(model_state)

        def apply(p, ms, inp, method):
            return self.net.apply(
                {"params": p, **ms}, inp, train=train, method=method, mutable=mutable
            )

        fake, ms = apply(params, model_state, z, GAN.generate)
        real_logits, ms = apply(params, ms, x, GAN.discriminate)
        fixed_g = jax.lax.stop_gradient(fake)
        fake_logits_d, ms = apply(params, ms, fixed_g, GAN.discriminate)
        d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits_d))
        groups = self._groups(params)
        fixed_d = {
            k: v if groups[k] == "generator" else jax.lax.stop_gradient(v)
            for k, v in params.items()
        }
        # The generator's pass through D: its statistics are not kept.
        fake_logits_g, _ = apply(fixed_d, ms, fake, GAN.discriminate)
        g_loss = jnp.mean(jax.nn.softplus(-fake_logits_g))
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits_d)),
        }
        return d_loss, g_loss, dict(ms), metrics

    def loss(self, params, model_state, batch, rng, train=True):
        d_loss, g_loss, new_state, metrics = self.terms(params, model_state, batch, rng, train)
        return d_loss + g_loss, (metrics, new_state)

    def visualize(self, params, model_state, images, rng):
        z = jax.random.normal(jax.random.PRNGKey(0), (2 * images.shape[0], self.z_dim))
        samples = self.net.apply({"params": params, **model_state}, z, method=GAN.generate)
        half = images.shape[0]
        return {
            "gan_samples": {
                "real": images,
                "samples": samples[:half],
                "more samples": samples[half:],
            }
        }
