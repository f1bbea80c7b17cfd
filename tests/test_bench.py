"""The bench scripts run (at toy sizes), so they cannot rot."""

import math

import pytest

from experiments.bench import throughput


@pytest.mark.slow
def test_throughput_script_runs_at_toy_size(capsys):
    rows = throughput.main(["--batch", "16", "--steps", "1", "--repeats", "1", "--toy"])
    jobs = {r["job"] for r in rows}
    assert jobs == {"step/default", "step/eigen", "augment"}
    assert {r["model"] for r in rows} == {"cnn", "resnet18"}
    assert all(r["images_s"] > 0 and math.isfinite(r["ms"]) for r in rows)
    assert "| cnn | step/eigen |" in capsys.readouterr().out


@pytest.mark.slow
def test_acquisition_bench_runs_at_toy_size(capsys):
    from experiments.bench import acquisition

    rows = acquisition.main(["--toy"])
    assert {r["strategy"] for r in rows} == set(acquisition.STRATEGIES)
    assert all(r["select_s"] >= 0 for r in rows)
    assert "| 400 | coreset |" in capsys.readouterr().out
