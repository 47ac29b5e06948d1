"""The fused CPU slot-attention kernels (``slot_attention.c``), compiled on first use and cached.

The C file is small and needs no torch headers, so the system C compiler builds it in well under a
second (no ninja, no build step at install). The shared library is cached under
``$DISTTGL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/disttgl`` or ``~/.cache/disttgl``), named by a hash of
the source, the compiler and its flags, so an edited kernel or another CPU type gets its own build.
It runs on several threads by splitting the roots: ctypes releases the GIL during the call.

Without a C compiler (or with ``DISTTGL_NATIVE=0``) ``kernels()`` returns None and the model uses the
pure-torch path, which computes the same function; a warning says why once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("slot_attention.c")
DISABLE_ENV = "DISTTGL_NATIVE"


class SlotInputs(ctypes.Structure):
    """Mirror of the C struct ``SlotInputs``."""

    _fields_ = [(name, ctypes.c_int64) for name in ("K", "H", "Ds", "Dt", "De")] + \
               [(name, ctypes.c_void_p) for name in ("gather", "mask", "c", "keep", "src", "q_s", "dt", "w2", "b2",
                                                     "q_t", "xe", "q_e")]


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a contiguous CPU tensor's data (None for None)."""
    if t is None:
        return None
    assert t.is_contiguous() and t.device.type == "cpu", "native kernels take contiguous CPU tensors"
    return t.data_ptr()


class NativeKernels:
    """The loaded library and a thread pool that runs a kernel over disjoint root ranges."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.slot_attention_forward.argtypes = [ctypes.POINTER(SlotInputs), i64, i64] + [vp] * 7
        lib.slot_attention_backward.argtypes = [ctypes.POINTER(SlotInputs), i64, i64] + [vp] * 14
        lib.slot_attention_node_grad.argtypes = [i64] * 4 + [vp] * 8
        for fn in (lib.slot_attention_forward, lib.slot_attention_backward, lib.slot_attention_node_grad):
            fn.restype = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size, self._pool_pid = 0, 0

    def split(self, num_rows: int) -> list[tuple[int, int]]:
        """Row ranges, one per torch thread (at least ~64 rows each: a call costs a few µs)."""
        parts = max(1, min(torch.get_num_threads(), num_rows // 64))
        bounds = [num_rows * i // parts for i in range(parts + 1)]
        return list(zip(bounds, bounds[1:]))

    def run(self, ranges: list[tuple[int, int]], call: Callable[[int, int, int], None]) -> None:
        """call(part, r0, r1) for every range: the first on this thread, the others on the pool."""
        # a forked child inherits the pool object but not its threads: it makes its own
        if len(ranges) > 1 and (self._pool_size < len(ranges) - 1 or self._pool_pid != os.getpid()):
            self._pool = ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="disttgl-native")
            self._pool_size, self._pool_pid = len(ranges) - 1, os.getpid()
        futures = [self._pool.submit(call, i, r0, r1) for i, (r0, r1) in enumerate(ranges) if i]
        call(0, *ranges[0])
        for f in futures:
            f.result()


def compiler_flags() -> list[str]:
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c11"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def cache_dir() -> Path:
    if os.environ.get("DISTTGL_CACHE_DIR"):
        return Path(os.environ["DISTTGL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "disttgl"


def build(source: Path = SOURCE, out_dir: Path | None = None) -> Path:
    """Compile ``source`` into the cache (atomically: a killed build leaves no library) and return it."""
    cc = shutil.which(os.environ.get("CC") or "cc") or (None if os.environ.get("CC") else shutil.which("gcc"))
    if not cc:
        raise RuntimeError(f"no C compiler found ({os.environ.get('CC') or 'cc, gcc'}; set CC)")
    flags = compiler_flags()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([source.read_text(), cc, *version, *flags]).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    lib = out_dir / f"slot_attention-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{cc} failed on {source}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@functools.cache
def kernels() -> NativeKernels | None:
    """The native kernels, or None (disabled, or no compiler: the torch path runs instead)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    try:
        return NativeKernels(ctypes.CDLL(str(build())))
    except (OSError, RuntimeError) as exc:
        log.warning("fused CPU attention kernels unavailable, using the slower torch path: %s", exc)
        return None
