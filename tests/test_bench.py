"""The bench scripts run (at toy sizes), so they cannot rot."""

import math

import pytest

from experiments.bench import throughput
from ssl_jax.kernels import native


@pytest.mark.slow
def test_throughput_script_runs_at_toy_size(capsys):
    rows = throughput.main(["--batch", "16", "--steps", "1", "--repeats", "1", "--toy"])
    jobs = {r["job"] for r in rows}
    assert jobs == {
        "step/default",
        "step/eigen",
        "step/onednn",
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
    # Each with XLA's kernels, then with ssl_jax's CPU kernels where they build.
    jobs = ["step/eigen", "step/cpu kernels"] if native.compiler() else ["step/eigen"]
    assert [(r["model"], r["job"]) for r in rows] == [(n, j) for n in names for j in jobs]
    assert all(r["images_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["job"] == "step/eigen")
    with pytest.raises(SystemExit):
        throughput.main(["--models", "--objectives", "ganz@objective.kw.up_kernel=2"])


@pytest.mark.slow
def test_conv_layer_bench_runs_at_toy_size_and_its_variants_agree(capsys):
    from experiments.bench import conv_layers

    rows = conv_layers.main(["--toy"])
    # 4 stages × (4 fwd + 3 dX + 4 dW + 2 layout), and oneDNN's 3 passes where it builds
    assert len(rows) in (4 * 13, 4 * 16)
    assert (len(rows) == 4 * 16) == (native.compiler() is not None)
    for r in rows:
        assert r["ms"] > 0
        if r["pass"] != "layout":  # the matmul forms compute the same convolution
            assert r["error"] < 1e-5, r
    out = capsys.readouterr().out
    assert "| 2×32×32×4 | dW | im2col |" in out and "| 2×4×4×32 | dW | winograd |" in out
    rows = conv_layers.main(["--toy", "--stages", "8x64", "--variants", "xla", "shift"])
    assert [(r["layer"], r["pass"], r["variant"]) for r in rows] == [
        ("2×8×8×4", p, v) for p in ("fwd", "dX", "dW") for v in ("xla", "shift")
    ]


@pytest.mark.slow
def test_resnet_parts_bench_runs_at_toy_size(capsys):
    from experiments.bench import resnet_parts

    rows = resnet_parts.main(["--toy"])
    names = [r["variant"] for r in rows]
    assert "per-channel sum, ones @ x" in names and "ssl_jax BatchNorm forward+backward" in names
    assert any(n.endswith("convs, flax BatchNorm") for n in names)
    assert any(n.endswith("convs, no BatchNorm") for n in names)
    assert ("onednn convs at every map size" in names) == (native.compiler() is not None)
    assert all(r["ms"] > 0 for r in rows)
    assert "| per-channel sum, XLA reduce |" in capsys.readouterr().out


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
    model_jobs = (
        "simclr_step",
        "mae_step",
        "mae_rest",
        "vit_blocks",
        "decoder_blocks",
        "attention",
        "dense_stack",
    )
    steps = [r for r in rows if r["job"] in model_jobs]
    assert all(r["gflops"] > 0 and r["of_peak"] > 0 for r in steps)
    assert "| knn | ssl_jax |" in out.read_text()


def test_peer_bench_set_overrides_parameters_by_type_and_refuses_unknown_keys():
    from experiments.bench import peers

    jobs = [{"width": 192, "tokens": 16}, {"size": 32}]
    got = peers.parse_overrides(["width=128", "tokens=64", "size=0.5"], jobs)
    assert got == {"width": 128, "tokens": 64, "size": 0.5}
    assert isinstance(got["width"], int)
    with pytest.raises(SystemExit, match="no selected job has it"):
        peers.parse_overrides(["depth=2"], jobs)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        peers.parse_overrides(["width"], jobs)


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
        ("ssl_jax", "jit, other"): {"times": [2.0, 2.0, 2.0], "items": 10, "info": {}},
    }
    rows = {r["setting"]: r for r in peers.rows_for("simclr_step", "image", results, 40.0)}
    # Every ssl_jax setting is compared, with the "jit" step's FLOP count.
    assert rows["jit, other"]["ratio"] == pytest.approx(0.5)
    assert rows["jit, other"]["gflops"] == pytest.approx(5.0)
    assert rows["compile"]["fastest_peer"] and not rows["eager"]["fastest_peer"]
    assert rows["jit"]["ratio"] == pytest.approx((10 / 0.5) / (10 / 1.0))
    assert rows["jit"]["gflops"] == pytest.approx(20.0)  # 20 images/s x 1 GFLOP
    assert rows["compile"]["of_peak"] == pytest.approx(10.0 / 40.0)


@pytest.mark.slow
def test_vit_variant_bench_runs_at_toy_size(capsys):
    from experiments.bench import vit_variants
    from ssl_jax.kernels import attention, gelu, layernorm

    kernels = (attention, gelu, layernorm)
    modes = [k.mode() for k in kernels]
    fused = ["--cpu-attention", "fused", "--cpu-norm-gelu", "fused"] if native.compiler() else []
    rows, outs = vit_variants.main(["--toy", *fused])
    assert [k.mode() for k in kernels] == modes  # as they were before the bench
    assert [r["variant"] for r in rows] == list(vit_variants.VARIANTS)
    assert all(r["ms"] > 0 for r in rows)
    # The options recompile the very same function: the same loss.
    base = float(outs[vit_variants.BASE][0])
    for name, (kind, _, _) in vit_variants.VARIANTS.items():
        if kind == "option":
            assert abs(float(outs[name][0]) - base) < 1e-5 * abs(base), name
    assert "| ssl_jax vit.Encoder | baseline |" in capsys.readouterr().out


def test_vit_variant_rewrites_compute_the_same_function():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.bench import vit_variants as vv

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 24)) * 2 + 0.5
    # LayerNorm with the hand-written backward: value and every gradient as flax's.
    scale = jax.random.normal(jax.random.PRNGKey(1), (24,))
    bias = jax.random.normal(jax.random.PRNGKey(2), (24,))
    ref = nn.LayerNorm(epsilon=1e-6)
    params = {"params": {"scale": scale, "bias": bias}}

    def loss_ref(x, s, b):
        return jnp.sum(jnp.sin(ref.apply({"params": {"scale": s, "bias": b}}, x)))

    def loss_hand(x, s, b):
        return jnp.sum(jnp.sin(vv.layer_norm(x, s, b)))

    np.testing.assert_allclose(
        vv.layer_norm(x, scale, bias), ref.apply(params, x), atol=1e-5, rtol=1e-5
    )
    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(x, scale, bias)
    g_hand = jax.grad(loss_hand, argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(g_hand, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # GELU through the sigmoid is flax's tanh-approximate GELU.
    z = jnp.linspace(-8.0, 8.0, 2001)
    np.testing.assert_allclose(vv.gelu_sigmoid(z), nn.gelu(z), atol=2e-6)
    np.testing.assert_allclose(vv.gelu_hand(z), nn.gelu(z), atol=2e-6)
    grad = jax.grad(lambda z: jnp.sum(vv.gelu_hand(z)))(z)
    np.testing.assert_allclose(grad, jax.grad(lambda z: jnp.sum(nn.gelu(z)))(z), atol=1e-5)
    # The reoriented kernel gradient: the same value and gradients as nn.Dense's.
    rows = x.reshape(15, 24)
    for features in (8, 40):  # narrowing (reoriented) and widening (plain)
        dense = vv.ReorientedDense(features)
        p = dense.init(jax.random.PRNGKey(4), rows)
        ref_dense = nn.Dense(features)

        def loss(p, x, layer):
            return jnp.sum(jnp.sin(layer.apply(p, x)))

        np.testing.assert_allclose(dense.apply(p, rows), ref_dense.apply(p, rows), atol=1e-5)
        g_hand = jax.grad(loss, argnums=(0, 1))(p, rows, dense)
        g_ref = jax.grad(loss, argnums=(0, 1))(p, rows, ref_dense)
        for a, b in zip(jax.tree.leaves(g_hand), jax.tree.leaves(g_ref), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # The two fused attentions agree on the same parameters.
    att = vv.FusedAttention(heads=4, kind="einsum")
    p = att.init(jax.random.PRNGKey(3), x)
    np.testing.assert_allclose(
        att.apply(p, x), vv.FusedAttention(heads=4, kind="sdpa").apply(p, x), atol=1e-5
    )


def test_augment_ops_bench_runs_at_toy_size_and_the_forms_agree(capsys):
    from experiments.bench import augment_ops

    rows = augment_ops.main(["--toy"])
    names = [r["name"] for r in rows if r["part"] == "ops"]
    assert names == list(augment_ops.op_specs(32)) and all(r["ms"] > 0 for r in rows)
    blur = [r for r in rows if r["part"] == "blur"]
    assert [r["name"] for r in blur] == list(augment_ops.BLURS)
    assert all(r["error"] < 1e-5 for r in blur)  # every form computes the same blur
    hue = [r for r in rows if r["part"] == "hue"]
    assert [r["name"] for r in hue] == list(augment_ops.HUES)
    assert all(r["error"] < 1e-5 for r in hue)  # shifts from -0.5 to 0.5 turns
    crop = [r for r in rows if r["part"] == "crop"]
    assert [r["name"] for r in crop] == list(augment_ops.CROPS) * 2  # 224 and MNIST's view
    assert all(r["error"] < 1e-4 for r in crop)
    assert "| view 1 |" in capsys.readouterr().out


def test_augment_chunks_bench_times_every_way_and_they_give_the_same_views():
    from experiments.bench import augment_ops

    recipes = ["CIFAR views", "MNIST strong"]
    rows = augment_ops.main(["--toy", "--parts", "chunks", "--recipes", *recipes])
    ways = ["one at a time (1)", "chunks of 2", "one vmap (0)"]
    assert [(r["recipe"], r["side"], r["name"]) for r in rows] == [
        (recipe, side, way) for side in (8, 16) for recipe in recipes for way in ways
    ]
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["diff"] < 1e-3 for r in rows)  # share of pixels off by more than 1e-3


def test_op_profile_shares_wall_time_among_ops_in_flight():
    from experiments.bench import op_profile as prof

    def op(name, start, end):  # a start event and its "end:" event, as XLA's CPU runtime
        return [
            {"ph": "X", "ts": start, "dur": 1.0, "name": name, "args": {"hlo_op": name}},
            {"ph": "X", "ts": end - 0.5, "dur": 0.5, "name": f"end: {name}", "args": {}},
        ]

    # dot.1 runs twice; ffi_call.3 overlaps the first run of dot.1 for 10 us.
    events = op("dot.1", 0, 30) + op("ffi_call.3", 20, 40) + op("dot.1", 50, 60)
    events.append({"ph": "M", "name": "thread_name", "args": {"name": "x"}})
    spans = prof.op_spans(events)
    assert sorted(spans) == [(0, 30, "dot.1"), (20, 40, "ffi_call.3"), (50, 60, "dot.1")]
    share, together, busy = prof.shares(spans)
    assert busy == pytest.approx(50.0)  # 0-40 and 50-60; the gap is not busy
    assert share["dot.1"] == pytest.approx(20 + 5 + 10)
    assert share["ffi_call.3"] == pytest.approx(5 + 10)
    assert sum(share.values()) == pytest.approx(busy)
    assert together[(("dot", 1),)] == pytest.approx(30.0)
    assert together[(("C++ kernel", 1), ("dot", 1))] == pytest.approx(10.0)
    assert together[(("C++ kernel", 1),)] == pytest.approx(10.0)
    assert prof.kind("dot_general.61") == "dot_general"


@pytest.mark.slow
def test_op_profile_bench_runs_at_toy_size(capsys):
    from experiments.bench import op_profile

    rows = op_profile.main(["--toy", "--job", "mae_rest", "--top", "5"])
    kinds = {r["name"]: r for r in rows if r["table"] == "kind of op"}
    assert any(k.startswith("dot") for k in kinds) and all(r["ms"] >= 0 for r in rows)
    assert sum(r["of_busy"] for r in kinds.values()) == pytest.approx(1.0)
    assert len([r for r in rows if r["table"] == "op"]) == 5
    assert len(kinds) == 6 and "the other" in list(kinds)[-1]  # 5 kinds, then the rest
    assert "| running together |" in capsys.readouterr().out


def test_dot_variants_bench_forms_agree_at_toy_size(capsys):
    from experiments.bench import dot_variants

    out = dot_variants.main(["--toy"])
    assert [r["layer"] for r in out["wgrad"]] == [s[3] for s in dot_variants.TOY_WGRAD]
    # Both orientations of the kernel gradient give x^T g.
    assert all(r["diff"] < 1e-4 and r["speed"] > 0 for r in out["wgrad"])
    assert [r["dots"] for r in out["concurrency"]] == dot_variants.TOY_CONCURRENCY
    assert "| dots | together ms |" in capsys.readouterr().out


def test_dot_variants_chained_dots_wait_for_the_one_before():
    import jax
    import jax.numpy as jnp

    from experiments.bench import dot_variants

    xs = [jnp.full((4, 3), float(i + 1)) for i in range(3)]
    ws = [jnp.eye(3) * (i + 1) for i in range(3)]
    text = jax.jit(dot_variants.dots_in_turn).lower(xs, ws).as_text()
    assert text.count("optimization_barrier") == 2  # between the 3 dots
    together = dot_variants.dots_together(xs, ws)
    for a, b in zip(dot_variants.dots_in_turn(xs, ws), together, strict=True):
        assert jnp.array_equal(a, b)


def test_model_step_jobs_build_only_the_settings_picked(monkeypatch):
    from experiments.bench import jax_side

    built = []

    def fake_step(config, shape, options=None, seed=0):
        built.append(config)
        return (lambda n: None), 1.0

    monkeypatch.setattr(jax_side, "pretrain_step", fake_step)
    params = {"batch": 4, "steps": 1}
    kernels = [("a", []), ("b", [])]
    variants, info = jax_side._steps("cfg", (8, 8, 3), params, kernels, pick=lambda n: n[-1:])
    assert list(variants) == ["b"] and len(built) == 1 and info == {}  # no FLOPs without "jit"
    variants, info = jax_side._steps("cfg", (8, 8, 3), params, kernels)
    assert list(variants) == ["jit", "a", "b"] and info["flops_per_item"] == 0.25
    with pytest.raises(ValueError, match="no setting"):
        jax_side._steps("cfg", (8, 8, 3), params, kernels, pick=lambda n: ["c"])


def test_every_job_builds_only_the_settings_picked_and_refuses_others():
    from experiments.bench import jax_side, peers

    params = {**peers.JOBS["dense_stack"][0], **peers.JOBS["dense_stack"][1]}
    variants, info = jax_side.dense_stack(params, pick=lambda names: names[1:])
    assert list(variants) == ["jit, 3-D tokens"] and info["flops_per_item"] > 0
    assert list(jax_side.dense_stack(params)[0]) == ["jit", "jit, 3-D tokens"]
    for job in peers.JOBS:  # a name no job has: one clear error, before any build
        params = {**peers.JOBS[job][0], **peers.JOBS[job][1]}
        with pytest.raises(jax_side.UnknownSetting, match="no setting \\[.nope.\\] in this job"):
            jax_side.JOBS[job](params, pick=lambda names: ["nope"])


@pytest.mark.slow
def test_peer_bench_settings_filter_the_ssl_jax_side(capsys):
    from experiments.bench import peers

    argv = ["--toy", "--ssl-jax-only", "--jobs", "dense_stack", "augment32"]
    rows = peers.main([*argv, "--settings", "jit"])
    assert [(r["job"], r["setting"]) for r in rows] == [
        ("dense_stack", "jit"),
        ("augment32", "jit"),
    ]
    assert "--settings ['jit']" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="augment32: --settings .*its settings: \\['jit', "):
        peers.main([*argv, "--settings", "jit, 3-D tokens"])
