"""Command line: ``python -m ssl_jax --config configs/simclr.py:mnist --workdir runs/a``,
and ``python -m ssl_jax label import|export --workdir W ...`` (see ssl_jax/labelling.py).

Runs ``config.stages`` in order. Each stage is resumable, so re-running the
same command after a crash continues where it stopped. Config overrides use
ml_collections' syntax (``--config.pretrain.steps=2000``); the config is
locked, so a misspelt key is an error rather than a silent new setting.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/*.py import configs.common
    sys.path.insert(0, REPO)
DEFAULT_CONFIG = os.path.join(REPO, "configs", "simclr.py") + ":mnist"


def define_flags():
    # Defined at start-up, not import: ml_collections checks --config.* overrides
    # against the config while defining the flag, and may raise there.
    flags.DEFINE_string("workdir", "", "output directory (default runs/<config>_<variant>)")
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "experiment config file[:variant]", lock_config=True
    )


def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{variant}" if variant else name)


def configure_xla(config):
    """Call before the first JAX computation: XLA reads its flags at backend start."""
    if config.xla_fast_cpu_conv:
        flag = "--xla_cpu_experimental_ynn_fusion_type="
        current = os.environ.get("XLA_FLAGS", "")
        if "ynn_fusion_type" not in current:
            os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


def check_config(config):
    """Refuse, before any work, settings that would otherwise fail only when
    the stage that reads them runs (possibly hours into a pipeline)."""
    from ssl_jax.evaluators.linear_probe import METHODS
    from ssl_jax.stages import get_stage

    for stage in config.stages:
        if (check := getattr(get_stage(stage), "check", None)) is not None:
            check(config)
    from ssl_jax.kernels import KERNELS

    for key, (_, module) in KERNELS.items():
        if config.get(key) not in (modes := module.MODES):
            raise ValueError(f"{key} must be one of {', '.join(modes)}, got {config.get(key)!r}")
    views = config.eval.tta_views
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"eval.tta_views must be an integer >= 0, got {views!r}")
    if views and not config.pp.weak:
        raise ValueError("eval.tta_views > 0 needs pp.weak, the recipe of the extra views")
    if config.eval.linear.method not in METHODS:
        raise ValueError(
            f"unknown eval.linear.method {config.eval.linear.method!r}; known: {', '.join(METHODS)}"
        )


def run_pipeline(config, workdir: str) -> dict:
    configure_xla(config)
    from ssl_jax import parallel

    parallel.initialize_distributed(
        config.distributed.coordinator,
        config.distributed.num_processes,
        config.distributed.process_id,
    )
    import jax

    from ssl_jax.kernels import KERNELS

    for key, (_, module) in KERNELS.items():  # after jax.distributed: they ask for the backend
        module.configure(config[key])

    from ssl_jax.data.labels import atomic_write_text
    from ssl_jax.stages import get_stage

    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write_text(
            os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
        )
    mesh = parallel.make_mesh()
    print(
        f"workdir {workdir}: stages {', '.join(config.stages)} on {mesh.devices.size} "
        f"{jax.default_backend()} device(s)"
        + (
            "".join(f", {op} by {module.runs_on()}" for op, module in KERNELS.values())
            if jax.default_backend() == "cpu"
            else ""
        )
    )
    results = {}
    for stage in config.stages:
        results[stage] = get_stage(stage).run(config, workdir, mesh)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        config = flags.FLAGS.config
        config.stages  # noqa: B018  (a config that failed to load raises here)
    except OSError as e:  # a config file that does not exist or does not load
        bad_command_line(" ".join(str(e).split()))
    try:
        check_config(config)
    except ValueError as e:
        print(f"error: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    workdir = flags.FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"])
    )
    from ssl_jax.kernels.native import Unavailable
    from ssl_jax.stages.active import WaitingForLabels
    from ssl_jax.stages.loop import NonFiniteLoss

    try:
        results = run_pipeline(config, workdir)
    except WaitingForLabels as e:
        print(f"\nwaiting for labels: {e}")
        return
    except (NonFiniteLoss, FileNotFoundError, ValueError, Unavailable) as e:
        if os.environ.get("SSL_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    from ssl_jax.stages.report import classifier_table, results_table

    if "probe" in results:
        print("\n" + results_table(results["probe"]) + "\n")
    if table := classifier_table(results):
        print(table + "\n")
    if os.path.exists(os.path.join(workdir, "report.md")):
        print(f"report: {os.path.join(workdir, 'report.md')}")
    print(json.dumps({"workdir": workdir}))


def bad_command_line(message: str):
    if "Traceback" in message:  # an exception inside get_config: its last line says it
        message = [line for line in message.splitlines() if line.strip()][-1]
    print(f"error: bad command line: {message}", file=sys.stderr)
    sys.exit(2)


# ml_collections raises these for an override of a key the locked config lacks.
_OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def _override_message(e: Exception) -> str:
    text = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    return f"unknown config key or bad value: {text}"


def parse_flags(argv):
    """absl's parser, with every bad flag or override reported as one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        bad_command_line(str(e))
    except _OVERRIDE_ERRORS as e:
        bad_command_line(_override_message(e))


def entry():
    if sys.argv[1:2] == ["label"]:  # python -m ssl_jax label import|export ...
        from ssl_jax import labelling

        sys.exit(labelling.main(sys.argv[2:]))
    try:
        define_flags()
    except _OVERRIDE_ERRORS as e:
        bad_command_line(_override_message(e))
    app.run(main, flags_parser=parse_flags)
