"""Stacked Bernoulli–Bernoulli RBMs, trained greedily layer by layer with
contrastive divergence, as the initialisation of an MLP encoder.

"A Fast Learning Algorithm for Deep Belief Nets" (Hinton, Osindero and Teh,
2006); "Training Products of Experts by Minimizing Contrastive Divergence"
(Hinton, 2002); persistent CD: Tieleman (2008).

Layer k has weights W [V, H], visible bias b [V], hidden bias c [H] and free energy

    F(v) = -v.b - sum_j softplus(c_j + (v W)_j).

CD-k runs k Gibbs steps from the data (or, with ``persistent``, from chains
kept in the TrainState across steps) to a negative sample v⁻; the update is the
gradient of  mean F(v_data) - mean F(sg(v⁻))  (sg: stop-gradient), which is the
CD gradient <v h>_model - <v h>_data (and the same for the biases). The input
of layer 0 is the binarised image (pixels > 0.5, from a [0, 1] pp recipe); the
input of layer k is the hidden probabilities of layer k-1. Pretraining steps
are split evenly over the layers: during layer k's share only its parameters
change (``mask_grads``), so each layer trains on the fixed layers below it.

Logged per layer: the reconstruction error mean (v - p(v | p(h | v)))^2 and a
pseudo-likelihood estimate (one random visible unit per example flipped:
V log sigmoid(F(v_flipped) - F(v))). The stacked weights become the ``mlp``
backbone (sigmoid units: the deep belief net's up-pass), which evaluators use
and the fine-tuning stage can train (``backbone_variables``).
"""

import jax
import jax.numpy as jnp

from ssl_jax.models import get_model


def free_energy(v, p):
    return -v @ p["b"] - jnp.sum(jax.nn.softplus(v @ p["W"] + p["c"]), axis=-1)


def hidden_probs(v, p):
    return jax.nn.sigmoid(v @ p["W"] + p["c"])


def visible_probs(h, p):
    return jax.nn.sigmoid(h @ p["W"].T + p["b"])


def gibbs(key, v, p, steps: int):
    """``steps`` rounds of v → h (sampled) → v (sampled); returns the last v."""
    for k in jax.random.split(key, steps):
        k_h, k_v = jax.random.split(k)
        h = jax.random.bernoulli(k_h, hidden_probs(v, p)).astype(v.dtype)
        v = jax.random.bernoulli(k_v, visible_probs(h, p)).astype(v.dtype)
    return v


def cd_loss(key, v, p, steps: int = 1, start=None):
    """(surrogate whose gradient is the CD-k update, negative sample).
    ``start``: persistent chain states to run from instead of the data."""
    v_neg = jax.lax.stop_gradient(gibbs(key, v if start is None else start, p, steps))
    return jnp.mean(free_energy(v, p)) - jnp.mean(free_energy(v_neg, p)), v_neg


def pseudo_likelihood(key, v, p):
    """Stochastic pseudo-log-likelihood per example (one flipped unit, times V)."""
    i = jax.random.randint(key, (v.shape[0],), 0, v.shape[1])
    flipped = v.at[jnp.arange(v.shape[0]), i].set(1 - v[jnp.arange(v.shape[0]), i])
    return v.shape[1] * jnp.mean(jax.nn.log_sigmoid(free_energy(flipped, p) - free_energy(v, p)))


class Objective:
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        if config.model.name != "mlp":
            raise ValueError(
                f"the rbm objective initialises an 'mlp' backbone, got model.name "
                f"{config.model.name!r}"
            )
        self.hidden = tuple(config.model.kw.hidden)
        if config.model.kw.get("activation", "sigmoid") != "sigmoid":
            raise ValueError("stacked RBMs initialise sigmoid units: model.kw.activation='sigmoid'")
        self.cd_steps, self.persistent = kw.cd_steps, kw.persistent
        self.steps_per_layer = max(1, config.pretrain.steps // len(self.hidden))
        self.batch_size = config.pretrain.batch_size
        self.mlp = get_model("mlp", **config.model.kw)

    def init(self, rng, batch):
        v = batch["view1"].reshape(batch["view1"].shape[0], -1)
        sizes = (v.shape[1], *self.hidden)
        params, chains = {}, {}
        for k, key in enumerate(jax.random.split(rng, len(self.hidden))):
            params[f"layer{k}"] = {
                "W": 0.01 * jax.random.normal(key, sizes[k : k + 2]),
                "b": jnp.zeros(sizes[k]),
                "c": jnp.zeros(sizes[k + 1]),
            }
            chains[f"layer{k}"] = jnp.zeros((self.batch_size, sizes[k]))
        return {"params": params, **({"chains": chains} if self.persistent else {})}

    def layer_inputs(self, params, images):
        """Input of every layer: binarised pixels, then each layer's hidden probabilities."""
        v = (images.reshape(images.shape[0], -1) > 0.5).astype(jnp.float32)
        inputs = [v]
        for k in range(len(self.hidden) - 1):
            v = jax.lax.stop_gradient(hidden_probs(v, params[f"layer{k}"]))
            inputs.append(v)
        return inputs

    def loss(self, params, model_state, batch, rng, train=True):
        del train
        total, metrics, new_chains = 0.0, {}, {}
        keys = jax.random.split(rng, 2 * len(self.hidden))
        for k, v in enumerate(self.layer_inputs(params, batch["view1"])):
            p = params[f"layer{k}"]
            start = model_state["chains"][f"layer{k}"] if self.persistent else None
            if start is not None and start.shape[0] != v.shape[0]:
                raise ValueError("persistent CD keeps one chain per batch item: fixed batch size")
            surrogate, v_neg = cd_loss(keys[2 * k], v, p, self.cd_steps, start)
            total = total + surrogate  # only the training layer's gradient is kept
            new_chains[f"layer{k}"] = v_neg
            recon = visible_probs(hidden_probs(v, p), p)
            metrics[f"recon_error_l{k}"] = jnp.mean((v - recon) ** 2)
            metrics[f"pseudo_ll_l{k}"] = pseudo_likelihood(keys[2 * k + 1], v, p)
        new_state = {"chains": new_chains} if self.persistent else {}
        return total, (metrics, new_state)

    def training_layer(self, step):
        return jnp.minimum(step // self.steps_per_layer, len(self.hidden) - 1)

    def mask_grads(self, grads, step):
        """Greedy: only the layer whose share of the steps this is learns."""
        current = self.training_layer(step)
        return {
            name: jax.tree.map(lambda g, k=k: jnp.where(current == k, g, 0.0), g)
            for k, (name, g) in enumerate(sorted(grads.items(), key=lambda kv: int(kv[0][5:])))
        }

    def after_step(self, state):
        return state

    def backbone_variables(self, params, model_state):
        """The stack as ``mlp`` parameters: dense<k> = (W, c) of layer k."""
        del model_state
        return {
            "params": {
                f"dense{k}": {"kernel": params[f"layer{k}"]["W"], "bias": params[f"layer{k}"]["c"]}
                for k in range(len(self.hidden))
            }
        }

    def encode(self, params, model_state, images):
        return self.mlp.apply(self.backbone_variables(params, model_state), images)
