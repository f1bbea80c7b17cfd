"""report.md and plots from what the other stages wrote; prints the results table."""

import os

import jax
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


CLASSIFIER_STAGES = (("finetune", "Fine-tuning"), ("selftrain", "Self-training"))


def classifier_table(results: dict) -> str:
    """Test accuracy of the trained classifiers ({stage: results}), or ""."""
    rows = [
        f"| {title} | {r['num_labels']} | {100 * r['val_acc']:.2f}% | {100 * r['test_acc']:.2f}% "
        f"| {r['wall_s']:.0f} s |"
        for stage, title in CLASSIFIER_STAGES
        if (r := results.get(stage))
    ]
    if not rows:
        return ""
    head = ["| classifier | labels | best val acc | test acc | wall |", "|---|---|---|---|---|"]
    return "\n".join(head + rows)


def _plots(workdir: str, pdir: str, config) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = read_jsonl(os.path.join(workdir, "pretrain", "metrics.jsonl"))
    for key, name, ylabel, title in (
        ("loss", "loss.png", "loss", "pretraining loss"),
        ("knn_val_acc", "knn_accuracy.png", "kNN val accuracy", "kNN, labelled items as memory"),
    ):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
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


def image_grid(rows: dict, path: str, title: str = ""):
    """Saves rows of images ({row name: [n, H, W, C] floats}) as one PNG. Each
    image is scaled to its own min..max, since objectives work in different
    value ranges (and a reconstruction may overshoot its input's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), n, figsize=(1.2 * n, 1.3 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(rows[name]):
                ax.axis("off")
                continue
            img = np.asarray(rows[name][c], np.float32)
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _objective_images(config, workdir: str, pdir: str, mesh) -> list[str]:
    """Image grids an objective offers through ``visualize`` (reconstructions,
    samples), from the finished pretraining checkpoint and the first test images."""
    from ssl_jax.stages.pretrain import STAGE as PRETRAIN

    if common.done_results(workdir, PRETRAIN) is None:
        return []
    ds = common.dataset(config, workdir)
    test = ds.splits["test"] if len(ds.splits["test"]) else ds.splits["val"]
    model = common.PretrainModel(config, mesh, test.images.shape[1:], ds.num_classes)
    if not hasattr(model.objective, "visualize"):
        return []
    params, model_state = model.encoder_variables(workdir, config.seed)
    images = model.eval_fn(jax.random.PRNGKey(0), test.images[: config.report.num_images])
    grids = model.objective.visualize(params, model_state, images, jax.random.PRNGKey(config.seed))
    if jax.process_index() == 0:
        for name, rows in grids.items():
            image_grid(rows, os.path.join(pdir, f"{name}.png"), title=name.replace("_", " "))
    return [f"{name}.png" for name in grids]


def active_section(active: dict, pdir: str) -> tuple[list[str], list[str]]:
    """(report lines, plots) of the active-learning rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = active["rounds"]
    lines = [
        f"## Active learning ({active['strategy']})",
        "",
        "| round | labels | chosen by | trained by | val acc | test acc |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['round']} | {r['num_labels']} | {r['strategy']} | {r.get('train', '?')} "
        f"| {100 * r['val_acc']:.2f}% | {100 * r['test_acc']:.2f}% |"
        for r in rounds
    ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["num_labels"] for r in rounds], [r["test_acc"] for r in rounds], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"active learning: {active['strategy']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(pdir, "active.png"), dpi=100)
    plt.close(fig)
    return lines + [""], ["active.png"]


def _embed_2d(x, method: str, seed: int):
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", random_state=seed, perplexity=30).fit_transform(x)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(x)
    raise ValueError(f"unknown report.embedding {method!r}: tsne or pca")


def check(config):
    """Refuse bad settings before any stage runs (called by the command line too)."""
    if config.report.embedding not in ("tsne", "pca"):
        raise ValueError(f"unknown report.embedding {config.report.embedding!r}: tsne or pca")


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    pdir = os.path.join(workdir, "plots")
    os.makedirs(pdir, exist_ok=True)
    common.stage_dir(workdir, STAGE)
    pretrain = common.done_results(workdir, "pretrain") or {}
    probe = common.done_results(workdir, "probe") or {}
    plots = _plots(workdir, pdir, config)
    plots += _objective_images(config, workdir, pdir, mesh)  # every process: it runs the model
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
            f"{pretrain.get('images_per_s', 0):.0f} augmented images/s through the encoder, "
            f"{pretrain.get('wall_s', 0):.0f} s.",
            "",
        ]
    if probe:
        lines += ["## Test accuracy on frozen features", "", results_table(probe), ""]
    trained = {stage: common.done_results(workdir, stage) for stage, _ in CLASSIFIER_STAGES}
    if table := classifier_table(trained):
        lines += ["## Fine-tuning and self-training", "", table, ""]
    if active := common.done_results(workdir, "active"):
        more, made = active_section(active, pdir)
        lines += more
        plots += made
    predict = common.done_results(workdir, "predict")
    if predict and predict["num_predicted"]:
        lines += [
            "## Predictions",
            "",
            f"`predictions.csv`: {predict['num_items']} items, {predict['num_predicted']} "
            f"labelled by the model (mean confidence {predict['mean_confidence']:.3f}, "
            f"{100 * predict['fraction_confident_0.95']:.1f}% at >= 0.95), least confident first.",
            "",
        ]
        if "predicted_acc" in predict:
            lines += [
                f"Against the dataset's hidden labels, the predicted labels are "
                f"{100 * predict['predicted_acc']:.2f}% right.",
                "",
            ]
    lines += [f"![{p}](plots/{p})" for p in plots]
    atomic_write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
    results = {"plots": plots}
    common.mark_done(workdir, STAGE, results)
    return results
