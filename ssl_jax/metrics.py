"""Metric writers (JSONL and TensorBoard event files) and the progress bar."""

import json
import os
import sys
import time

import jax
import numpy as np


class MetricWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and writes the
    same scalars as TensorBoard events (tensorboardX: no TensorFlow needed).
    Only process 0 writes."""

    def __init__(self, directory: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(directory, "metrics.jsonl")
        self.tb = None
        if self.active:
            os.makedirs(directory, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(directory)

    def write(self, step: int, scalars: dict):
        if not self.active:
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, int(step))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm bar with loss and images/s, shown on process 0 only; degrades to
    periodic log lines when stderr is not a terminal (CI logs, nohup)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", images_per_step: int = 1):
        from tqdm import tqdm

        self.images_per_step = images_per_step
        self.t0, self.s0 = time.perf_counter(), initial
        disable = jax.process_index() != 0
        interval = 0.5 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=disable,
            mininterval=interval,
            dynamic_ncols=True,
        )

    def update(self, step: int, **scalars):
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.s0) * self.images_per_step / max(elapsed, 1e-9)
        post = {k: f"{float(v):.4g}" for k, v in scalars.items()}
        post["img/s"] = f"{rate:.0f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(step - self.bar.n)

    def images_per_second(self, step: int) -> float:
        return (step - self.s0) * self.images_per_step / max(time.perf_counter() - self.t0, 1e-9)

    def close(self):
        self.bar.close()
