"""Building ssl_jax's C++ kernels for XLA's CPU backend, once per machine.

Each kernel is one C++ file next to this module holding XLA FFI handlers; they
share the vector helpers of ``simd.h``.
``build_library`` compiles it with the system's C++ compiler (``$CXX``, else
``g++``/``c++``) against jaxlib's FFI headers into ``$SSL_JAX_CACHE_DIR``
(default ``~/.cache/ssl_jax``)/kernels. The file name carries a hash of the
source, the compile command, the versions and this CPU's model and flags, so a
change of any rebuilds it, and a cache shared between machines never loads code
built for another CPU. The finished library is renamed into place, so a
concurrent build never sees half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import jax


class Unavailable(RuntimeError):
    """A kernel cannot be built or loaded here (the message says why)."""


def cache_dir() -> str:
    return os.environ.get("SSL_JAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "ssl_jax"
    )


def _cpu_id() -> bytes:
    """This CPU's model name and feature flags (what -march=native depends on)."""
    keys = (b"model name", b"flags", b"Features", b"CPU implementer", b"CPU part")  # x86, Arm
    try:
        with open("/proc/cpuinfo", "rb") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(keys)]
    except OSError:
        lines = [platform.processor().encode()]
    return b"\n".join([platform.machine().encode(), *sorted(set(lines))])


HEADERS = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "simd.h"),)


def compiler() -> str | None:
    """The C++ compiler the kernels are built with: ``$CXX``, else g++ or c++."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_command(cxx: str, source: str, out: str, args, warnings=()) -> list[str]:
    """The command that builds ``source`` into the shared library ``out`` with
    the extra compiler and linker ``args``; the compiler's warnings are off
    unless ``warnings`` (flags) names some (a test turns on those that flag slow
    vector code)."""
    cmd = [cxx, "-std=c++17", "-shared", "-fPIC", source, "-o", out]
    cmd += ["-I", jax.ffi.include_dir(), "-I", os.path.dirname(HEADERS[0]), *args]
    return cmd + (list(warnings) or ["-w"])


def build_library(name: str, source: str, args: list[str], what: str, force: bool = False) -> str:
    """Compiles ``source`` (once; again with ``force``) with the extra compiler and
    linker ``args``; returns the .so path. ``what`` names the kernels in messages.
    The sources may include the shared ``HEADERS`` (their folder is on the
    include path, and they are part of the hash)."""
    texts = []
    for path in (source, *HEADERS):
        with open(path, "rb") as f:
            texts.append(f.read())
    parts = [*texts, " ".join(args).encode(), jax.__version__.encode(), sys.version.encode()]
    key = hashlib.sha256(b"\0".join([*parts, _cpu_id()])).hexdigest()[:16]
    out = os.path.join(cache_dir(), "kernels", f"{name}-{key}.so")
    if os.path.exists(out) and not force:
        return out
    print(f"building the {what} (once) into {out}", file=sys.stderr)
    cxx = compiler()
    if not cxx:
        raise Unavailable(f"no C++ compiler found to build the {what} (set $CXX)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    cmd = compile_command(cxx, source, tmp, args)
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # $CXX names no runnable program
            raise Unavailable(f"cannot run the C++ compiler {cxx!r} for the {what}: {e}") from e
        if done.returncode != 0:
            tail = done.stderr[-2000:]
            raise Unavailable(f"building the {what} failed ({' '.join(cmd)}):\n{tail}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def register(path: str, targets) -> ctypes.CDLL:
    """Loads the library at ``path`` and registers its FFI ``targets`` for the CPU."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:  # e.g. a library this machine cannot load
        raise Unavailable(f"cannot load {path}: {e}") from e
    for target in targets:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
    return lib


def single_cpu_device() -> bool:
    """Whether JAX runs on one CPU device, where the kernels apply: they have no
    partitioning rule, so XLA would gather a batch sharded over several devices
    around them."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def configure(key: str, modes, mode: str, state: dict, load, fallback: str) -> str:
    """Selects who runs one kind of op on the CPU (config key ``key``) and returns
    it: ``modes`` are ("auto", "xla", OWN). OWN builds and loads the kernels with
    ``load()`` (raising ``Unavailable`` if it cannot); "auto" selects OWN where
    JAX's backend is the CPU and it loads, else "xla", saying why on stderr
    (``fallback`` names what runs instead). The choice is kept in ``state["mode"]``."""
    if mode not in modes:
        raise ValueError(f"{key} must be one of {', '.join(modes)}, got {mode!r}")
    own = modes[-1]
    if mode == "auto":
        mode = "xla"
        if jax.default_backend() == "cpu":
            try:
                load()
                mode = own
            except Unavailable as e:
                print(f"{key}=auto: {fallback}, as {e}", file=sys.stderr)
    elif mode == own:
        load()
    state["mode"] = mode
    return mode


class FusedKernel:
    """The build, load and choice of one of ssl_jax's plain C++ kernels (no
    dependency beyond the compiler): ``source`` (next to this module) with its
    FFI ``targets``, chosen by config ``key`` among ("auto", "xla", "fused").
    A kernel module exposes these methods as its own functions."""

    MODES = ("auto", "xla", "fused")
    ARGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")

    def __init__(self, key: str, source: str, targets: tuple[str, ...], what: str, xla: str):
        self.key, self.targets, self.what, self.xla = key, targets, what, xla
        self.source = os.path.join(os.path.dirname(os.path.abspath(__file__)), source)
        self.name = os.path.splitext(source)[0]
        self.state = {"mode": "xla", "lib": None}

    def build(self, force: bool = False) -> str:
        """Compiles the source (once; again with ``force``) and returns the .so path."""
        return build_library(self.name, self.source, list(self.ARGS), self.what, force)

    def load(self) -> None:
        """Builds if needed, loads, and registers the FFI handlers (once per process)."""
        if self.state["lib"] is None:
            self.state["lib"] = register(self.build(), self.targets)

    def configure(self, mode: str) -> str:
        """Selects who runs the op on the CPU and returns it: "fused" (raises
        ``Unavailable`` if it cannot be built or loaded), "xla", or "auto":
        fused where JAX's backend is the CPU and it loads, else XLA (saying why
        on stderr)."""
        return configure(self.key, self.MODES, mode, self.state, self.load, self.xla)

    def mode(self) -> str:
        return self.state["mode"]

    def route(self) -> bool:
        """Whether traced code should call the kernel now."""
        return self.state["mode"] == "fused" and single_cpu_device()

    def runs_on(self) -> str:
        """Who runs the op now: "fused" or "xla"."""
        return "fused" if self.route() else "xla"
