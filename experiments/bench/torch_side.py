"""The peer side of experiments/bench/peers.py: PyTorch, LightlySSL,
scikit-learn and scikit-activeml, run from their own environment
(.venv-bench, experiments/bench/requirements-bench.txt).

Same contract as jax_side.py: ``JOBS[name](params, peer_info) -> (variants,
info)``, each variant already warmed up, returning the items it processed.
Where a peer has several reasonable settings (PyTorch eager vs torch.compile)
each is a variant and the table compares against the fastest.
"""

import contextlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from experiments.bench import data  # noqa: E402

torch.manual_seed(0)


def _train_variants(make_model, make_loss, make_opt, inputs_fn, params):
    """Eager (channels_last where it applies) and torch.compile variants of one
    training step: forward, loss, backward, optimizer step."""
    variants = {}
    for name in params.get("torch_variants", ("eager", "compile")):
        model = make_model()
        opt = make_opt(model)
        fwd = torch.compile(model) if name == "compile" else model
        inputs = inputs_fn()

        def step(fwd=fwd, opt=opt, inputs=inputs):
            opt.zero_grad(set_to_none=True)
            loss = make_loss(fwd, inputs)
            loss.backward()
            opt.step()
            return loss.item()

        step()  # warm-up (and compilation)

        def go(step=step, steps=params["steps"]):
            for _ in range(steps):
                step()
            return steps * params["batch"]

        variants[name] = go
    return variants, {}


def resnet18_cifar():
    import torchvision

    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def simclr_step(params, peer_info=None):
    """torchvision ResNet-18 with the CIFAR stem, lightly's SimCLRProjectionHead
    (512-2048-128) and NTXentLoss (T=0.5), lightly's LARS; both views of the
    batch in one forward pass, channels_last, float32, BatchNorm in train mode."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.utils.lars import LARS

    b = params["batch"]
    criterion = NTXentLoss(temperature=0.5)

    def make_model():
        model = nn.Sequential(resnet18_cifar(), SimCLRProjectionHead(512, 2048, 128))
        return model.to(memory_format=torch.channels_last).train()

    def inputs():
        x = torch.from_numpy(data.images(2 * b, 32, 3).astype(np.float32) / 255.0)
        return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def loss(fwd, x):
        z = fwd(x)
        return criterion(z[:b], z[b:])

    def opt(model):
        return LARS(model.parameters(), lr=0.3 * b / 256, momentum=0.9, weight_decay=1e-6)

    return _train_variants(make_model, loss, opt, inputs, params)


class Block(nn.Module):
    def __init__(self, width, heads, mlp):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x):
        return self.layer(x)


class MAE(nn.Module):
    """MAE in plain PyTorch, the shapes of ssl_jax's configs/mae.py:cifar10:
    ViT-Ti (192 wide, 12 deep, 3 heads, MLP 768) on 4x4 patches of 32x32 images,
    75% of patches masked per example, decoder 128 wide, 2 deep, 4 heads,
    fixed 2-D sin-cos positions, loss on masked patches with normalised pixels."""

    def __init__(self, depth=12, width=192, heads=3, dec_width=128, dec_depth=2, patch=4, size=32):
        super().__init__()
        self.patch, self.n = patch, (size // patch) ** 2
        dim = patch * patch * 3
        self.embed = nn.Linear(dim, width)
        self.register_buffer("pos", sincos(self.n, width))
        self.register_buffer("dec_pos", sincos(self.n, dec_width))
        self.encoder = nn.Sequential(*[Block(width, heads, 4 * width) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.dec_embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.decoder = nn.Sequential(
            *[Block(dec_width, 4, 4 * dec_width) for _ in range(dec_depth)]
        )
        self.dec_norm = nn.LayerNorm(dec_width)
        self.pred = nn.Linear(dec_width, dim)

    def forward(self, images):  # [B, H, W, 3]
        b, p = images.shape[0], self.patch
        patches = images.unfold(1, p, p).unfold(2, p, p).reshape(b, self.n, -1)
        keep = self.n // 4
        order = torch.argsort(torch.rand(b, self.n), dim=1)
        restore = torch.argsort(order, dim=1)
        visible = torch.gather(patches, 1, order[:, :keep, None].expand(-1, -1, patches.shape[-1]))
        pos = torch.gather(
            self.pos.expand(b, -1, -1), 1, order[:, :keep, None].expand(-1, -1, self.pos.shape[-1])
        )
        x = self.norm(self.encoder(self.embed(visible) + pos))
        x = self.dec_embed(x)
        x = torch.cat([x, self.mask_token.expand(b, self.n - keep, -1)], dim=1)
        x = torch.gather(x, 1, restore[..., None].expand(-1, -1, x.shape[-1])) + self.dec_pos
        pred = self.pred(self.dec_norm(self.decoder(x)))
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        target = (patches - mean) / (var + 1e-6).sqrt()
        mask = (restore >= keep).float()
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def _grad_variants(make_model, params):
    """Eager and torch.compile: forward and backward of mean(model(x)^2), no
    optimizer (the ssl_jax side's jitted value_and_grad)."""
    x = torch.from_numpy(data.tokens(params["batch"], params["tokens"], params["width"]))
    variants = {}
    for name in ("eager", "compile"):
        model = make_model().train()
        fwd = torch.compile(model) if name == "compile" else model

        def step(fwd=fwd, model=model):
            model.zero_grad(set_to_none=True)
            loss = fwd(x).square().mean()
            loss.backward()
            return loss.item()

        step()

        def go(step=step):
            for _ in range(params["steps"]):
                step()
            return params["steps"] * params["batch"]

        go()
        variants[name] = go
    return variants, {}


def vit_blocks(params, peer_info=None):
    p = params
    return _grad_variants(
        lambda: nn.Sequential(
            *[Block(p["width"], p["heads"], p["mlp"]) for _ in range(p["depth"])],
            nn.LayerNorm(p["width"], eps=1e-6),
        ),
        p,
    )


class DenseStack(nn.Module):
    def __init__(self, depth, width, mlp):
        super().__init__()
        self.pairs = nn.ModuleList(
            nn.Sequential(nn.Linear(width, mlp, bias=False), nn.Linear(mlp, width, bias=False))
            for _ in range(depth)
        )

    def forward(self, x):
        for pair in self.pairs:
            x = x + pair(x)
        return x


def dense_stack(params, peer_info=None):
    p = params
    return _grad_variants(lambda: DenseStack(p["depth"], p["width"], p["mlp"]), p)


def attention(params, peer_info=None):
    """``F.scaled_dot_product_attention`` forward and backward of mean(out^2) on
    [batch, tokens, heads, head_dim] inputs (viewed as [batch, heads, tokens,
    head_dim], as nn.MultiheadAttention passes them): the default kernel choice
    (flash attention on the CPU) and the math path."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    p = params
    q, k, v = (
        torch.from_numpy(
            data.tokens(p["batch"], p["tokens"], p["heads"] * p["head_dim"], seed).reshape(
                p["batch"], p["tokens"], p["heads"], p["head_dim"]
            )
        ).requires_grad_()
        for seed in range(3)
    )

    def step():
        for t in (q, k, v):
            t.grad = None
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
        out.transpose(1, 2).square().mean().backward()

    variants = {}
    for name, backends in (("eager", None), ("eager, math kernel", [SDPBackend.MATH])):

        def go(backends=backends):
            with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                for _ in range(p["steps"]):
                    step()
            return p["steps"] * p["batch"]

        go()
        variants[name] = go
    return variants, {}


def sincos(n, width):
    side = int(round(n**0.5))
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4) / (width // 4))
    parts = [
        f(c.flatten()[:, None].float() * omega) for c in (xs, ys) for f in (torch.sin, torch.cos)
    ]
    return torch.cat(parts, dim=1)[None]


def mae_step(params, peer_info=None):
    b = params["batch"]

    def inputs():
        return torch.from_numpy(data.images(b, 32, 3).astype(np.float32) / 255.0)

    return _train_variants(
        lambda: MAE(depth=params.get("depth", 12)).train(),
        lambda fwd, x: fwd(x),
        lambda m: torch.optim.AdamW(
            m.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05
        ),
        inputs,
        params,
    )


def augment(params, peer_info=None):
    """lightly's SimCLRTransform (two views) on PIL images through a PyTorch
    DataLoader with 2 workers; one repeat = one pass over ``batches`` batches
    with fresh workers (an epoch as a user runs it; persistent workers would
    keep preparing batches while the other side is being timed)."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    size, src, b = params["size"], params["source"], params["batch"]
    arrays = [data.images(b, src, 3, seed=i) for i in range(params["batches"])]
    pil = [Image.fromarray(a) for arr in arrays for a in arr]
    kw = {"gaussian_blur": 0.0} if size == 32 else {}
    transform = SimCLRTransform(input_size=size, **kw)

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return transform(pil[i])

    loader = torch.utils.data.DataLoader(Dataset(), batch_size=b, num_workers=params["workers"])

    def go():
        n = 0
        for views in loader:
            n += views[0].shape[0]
        return n

    go()
    return {"dataloader": go}, {}


def linear_probe_job(params, peer_info=None):
    """scikit-learn LogisticRegression (lbfgs, multinomial) after StandardScaler,
    C matched to ssl_jax's L2: mean cross-entropy + l2/2 |w|^2 <=> C = 1/(l2 n)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y, xv, yv = data.features(params["train"], params["val"], params["dim"], params["classes"])
    out = {}

    def go():
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=1.0 / (params["l2"] * len(x)), max_iter=1000)
        clf.fit(scaler.transform(x), y)
        out["acc"] = float(clf.score(scaler.transform(xv), yv))
        return len(x)

    go()
    return {"sklearn": go}, {"val_acc": out["acc"], "setting": "lbfgs, tol 1e-4"}


def knn_job(params, peer_info=None):
    """scikit-learn KNeighborsClassifier, brute force, cosine, all cores."""
    from sklearn.neighbors import KNeighborsClassifier

    x, y, xt, yt = data.features(params["train"], params["test"], params["dim"], params["classes"])
    out = {}

    def go():
        clf = KNeighborsClassifier(params["k"], metric="cosine", algorithm="brute", n_jobs=-1)
        out["acc"] = float(np.mean(clf.fit(x, y).predict(xt) == yt))
        return len(xt)

    go()
    return {"sklearn": go}, {"test_acc": out["acc"]}


def acquisition_job(params, peer_info=None):
    """scikit-activeml: uncertainty_scores + the top budget (entropy, margin),
    CoreSet, Badge (on a LogisticRegression fitted to the labelled items
    before timing) and TypiClust; unlabelled items carry NaN labels."""
    import skactiveml.pool as al
    from scipy.special import softmax
    from skactiveml.classifier import SklearnClassifier
    from sklearn.linear_model import LogisticRegression

    emb, logits, labels, labelled = data.pool(params["pool"], params["dim"], params["classes"])
    strategy, budget = params["strategy"], params["budget"]
    y = np.where(labelled, labels, np.nan)
    calls = {"n": 0}

    if strategy in ("entropy", "margin"):
        method = {"entropy": "entropy", "margin": "margin_sampling"}[strategy]

        def select():
            u = al.uncertainty_scores(softmax(logits, axis=1), method=method)
            u[labelled] = -np.inf
            return np.argpartition(-u, budget)[:budget]

    else:
        kwargs = {}
        if strategy == "badge":
            clf = SklearnClassifier(
                LogisticRegression(max_iter=200), classes=np.arange(params["classes"])
            )
            clf.fit(emb, y)
            kwargs = {"clf": clf, "fit_clf": False}
        cls = {"coreset": al.CoreSet, "badge": al.Badge, "typiclust": al.TypiClust}[strategy]

        def select():
            calls["n"] += 1
            return cls(random_state=calls["n"]).query(emb, y, batch_size=budget, **kwargs)

    def go():
        ids = select()
        assert len(set(np.asarray(ids).tolist())) == budget
        return len(emb)

    go()
    return {"scikit-activeml": go}, {}


def matmul(params, peer_info=None):
    n = params["n"]
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(n, n)).astype(np.float32))
    b = torch.from_numpy(rng.normal(size=(n, n)).astype(np.float32))

    def go():
        for _ in range(params["reps"]):
            torch.mm(a, b)
        return params["reps"]

    go()
    return {"torch": go}, {"flops_per_item": 2.0 * n**3}


JOBS = data.jobs(sys.modules[__name__])
