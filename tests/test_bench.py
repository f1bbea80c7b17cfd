"""The bench scripts run (at toy sizes), so they cannot rot."""

import math

import pytest

from experiments.bench import throughput


@pytest.mark.slow
def test_throughput_script_runs_at_toy_size(capsys):
    rows = throughput.main(["--batch", "16", "--steps", "1", "--repeats", "1", "--toy"])
    jobs = {r["job"] for r in rows}
    assert jobs == {
        "step/default",
        "step/eigen",
        "augment",
        "augment/chunks of 64",
        "augment/one at a time",
    }
    assert {r["model"] for r in rows} == {"cnn", "resnet18"}
    assert all(r["images_s"] > 0 and math.isfinite(r["ms"]) for r in rows)
    assert "| cnn | step/eigen |" in capsys.readouterr().out


@pytest.mark.slow
def test_throughput_times_objectives_steps_at_toy_size():
    rows = throughput.main(
        ["--models", "--objectives", "gan", "gan@objective.kw.up_kernel=2", "rbm", "mae"]
        + ["semisup", "--batch", "8", "--steps", "1", "--repeats", "1", "--toy"]
    )
    names = ["gan", "gan@objective.kw.up_kernel=2", "rbm", "mae", "semisup"]
    assert [r["model"] for r in rows] == names
    assert all(r["job"] == "step/eigen" and r["images_s"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        throughput.main(["--models", "--objectives", "ganz@objective.kw.up_kernel=2"])


@pytest.mark.slow
def test_conv_layer_bench_runs_at_toy_size_and_its_variants_agree(capsys):
    from experiments.bench import conv_layers

    rows = conv_layers.main(["--toy"])
    assert len(rows) == 4 * 10  # 4 stages × (3 fwd + 2 dX + 3 dW + 2 layout)
    for r in rows:
        assert r["ms"] > 0
        if r["pass"] != "layout":  # the matmul forms compute the same convolution
            assert r["error"] < 1e-5, r
    assert "| 2×32×32×4 | dW | im2col |" in capsys.readouterr().out


@pytest.mark.slow
def test_acquisition_bench_runs_at_toy_size(capsys):
    from experiments.bench import acquisition

    rows = acquisition.main(["--toy"])
    assert {r["strategy"] for r in rows} == set(acquisition.STRATEGIES)
    assert all(r["select_s"] >= 0 for r in rows)
    assert "| 400 | coreset |" in capsys.readouterr().out


@pytest.mark.slow
def test_peer_bench_runs_every_job_at_toy_size_on_the_ssl_jax_side(capsys, tmp_path):
    from experiments.bench import peers

    out = tmp_path / "table.md"
    rows = peers.main(["--toy", "--ssl-jax-only", "--out", str(out)])
    assert {r["job"] for r in rows} == set(peers.JOBS)
    assert all(r["side"] == "ssl_jax" and r["per_s"] > 0 for r in rows)
    # Model steps carry XLA's FLOP count, hence GFLOP/s and a fraction of the matmul peak.
    steps = [r for r in rows if r["job"] in ("simclr_step", "mae_step")]
    assert all(r["gflops"] > 0 and r["of_peak"] > 0 for r in steps)
    assert "| knn | ssl_jax |" in out.read_text()


def test_peer_bench_ratio_is_against_the_fastest_peer_setting():
    from experiments.bench import peers

    results = {
        ("peer", "eager"): {"times": [2.0, 2.2, 1.8], "items": 10, "info": {}},
        ("peer", "compile"): {"times": [1.0, 1.1, 0.9], "items": 10, "info": {}},
        ("ssl_jax", "jit"): {
            "times": [0.5, 0.5, 0.6],
            "items": 10,
            "info": {"flops_per_item": 1e9},
        },
    }
    rows = {r["setting"]: r for r in peers.rows_for("simclr_step", "image", results, 40.0)}
    assert rows["compile"]["fastest_peer"] and not rows["eager"]["fastest_peer"]
    assert rows["jit"]["ratio"] == pytest.approx((10 / 0.5) / (10 / 1.0))
    assert rows["jit"]["gflops"] == pytest.approx(20.0)  # 20 images/s x 1 GFLOP
    assert rows["compile"]["of_peak"] == pytest.approx(10.0 / 40.0)
