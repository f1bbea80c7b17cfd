"""Pipeline stages, one module each with ``run(config, workdir, mesh)``;
``config.stages`` names them in the order they run."""

# The stage modules; tests/test_pipeline.py checks this against the package.
NAMES = ("pretrain", "probe", "finetune", "selftrain", "active", "predict", "report")
