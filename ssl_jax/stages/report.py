"""report.md and plots from what the other stages wrote; prints the results table."""

import os

import numpy as np

from ssl_jax.data.labels import atomic_write_text
from ssl_jax.metrics import read_jsonl
from ssl_jax.stages import common

STAGE = "report"


def results_table(probe: dict) -> str:
    sets = sorted({k.split("/")[0] for k in probe}, key=lambda s: s != "labelled")
    rows = [
        "| labels | kNN test acc | linear probe test acc | linear probe val acc |",
        "|---|---|---|---|",
    ]
    fmt = lambda v: "—" if v is None else f"{100 * v:.2f}%"
    for s in sets:
        rows.append(
            f"| {s} ({probe.get(f'{s}/num_labels', '?')}) | "
            f"{fmt(probe.get(f'{s}/knn_test_acc'))} | "
            f"{fmt(probe.get(f'{s}/linear_test_acc'))} | "
            f"{fmt(probe.get(f'{s}/linear_val_acc'))} |"
        )
    return "\n".join(rows)


def _plots(workdir: str, pdir: str, config) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = read_jsonl(os.path.join(workdir, "pretrain", "metrics.jsonl"))
    for key, name, ylabel in (
        ("loss", "loss.png", "pretraining loss"),
        ("knn_val_acc", "knn_accuracy.png", "kNN val accuracy (labelled items as memory)"),
    ):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(pdir, name), dpi=100)
        plt.close(fig)
        made.append(name)
    feats_path = os.path.join(workdir, "probe", "test_features.npz")
    if os.path.exists(feats_path):
        d = np.load(feats_path)
        xy = _embed_2d(d["features"], config.report.embedding, config.seed)
        fig, ax = plt.subplots(figsize=(5, 5))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=d["labels"], cmap="tab10", s=4)
        ax.legend(*sc.legend_elements(), fontsize=7, loc="best", markerscale=0.8)
        ax.set_title(f"test features ({config.report.embedding})")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(os.path.join(pdir, "embedding.png"), dpi=100)
        plt.close(fig)
        made.append("embedding.png")
    return made


def _embed_2d(x, method: str, seed: int):
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", random_state=seed, perplexity=30).fit_transform(x)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(x)
    raise ValueError(f"unknown report.embedding {method!r}: tsne or pca")


def run(config, workdir: str, mesh) -> dict:
    del mesh
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    pdir = os.path.join(workdir, "plots")
    os.makedirs(pdir, exist_ok=True)
    common.stage_dir(workdir, STAGE)
    pretrain = common.done_results(workdir, "pretrain") or {}
    probe = common.done_results(workdir, "probe") or {}
    plots = _plots(workdir, pdir, config)
    lines = [
        f"# Report: {config.objective.name} on {config.data.name}",
        "",
        f"Model `{config.model.name}`, {pretrain.get('steps', '?')} pretraining steps at "
        f"batch {config.pretrain.batch_size}, seed {config.seed}.",
        "",
    ]
    if pretrain:
        lines += [
            f"Pretraining: final loss {pretrain.get('final_loss', float('nan')):.4f}, "
            f"{pretrain.get('images_per_s', 0):.0f} images/s, "
            f"{pretrain.get('wall_s', 0):.0f} s.",
            "",
        ]
    if probe:
        lines += ["## Test accuracy on frozen features", "", results_table(probe), ""]
    lines += [f"![{p}](plots/{p})" for p in plots]
    atomic_write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
    results = {"plots": plots}
    common.mark_done(workdir, STAGE, results)
    return results
