"""Pipeline stages, one module each, named in ``config.stages`` in the order
they run. Each module defines:
  STAGE                                  its name (the module's)
  run(config, workdir, mesh) -> dict     its results; returns early once done
  check(config)                          optional: raises ValueError for bad settings;
                                         the command line calls it for every stage
                                         before the first one starts
"""

import importlib
import pkgutil


def names() -> list[str]:
    """The stage modules of this package (helpers such as ``common`` excluded)."""
    out = []
    for m in pkgutil.iter_modules(__path__):
        if getattr(importlib.import_module(f"{__name__}.{m.name}"), "STAGE", None) == m.name:
            out.append(m.name)
    return sorted(out)


def get_stage(name: str):
    """The module of stage ``name``."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        module = None
    if getattr(module, "STAGE", None) != name:
        raise ValueError(f"unknown stage {name!r} in config.stages; known: {', '.join(names())}")
    return module
