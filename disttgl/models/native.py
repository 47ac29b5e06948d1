"""The fused CPU slot-attention kernels (``slot_attention.c``), compiled on first use and cached.

The C file is small and needs no torch headers, so the system C compiler builds it in well under a
second (no ninja, no build step at install). The shared library is cached under
``$DISTTGL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/disttgl`` or ``~/.cache/disttgl``), named by a hash of
the source, the compiler and its flags, so an edited kernel or another CPU type gets its own build.
The kernels run in torch's own OpenMP thread pool: they are linked to the runtime torch loaded.

Without a C compiler (or with ``DISTTGL_NATIVE=0``) ``kernels()`` returns None and the model uses the
pure-torch path, which computes the same function; a warning says why once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

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
    """The loaded library; ``threads`` is torch's thread count when called (the same OpenMP pool)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.slot_attention_forward.argtypes = [ctypes.POINTER(SlotInputs), i64, i32] + [vp] * 7
        lib.slot_attention_backward.argtypes = [ctypes.POINTER(SlotInputs), i64, i32, i64] + [vp] * 14
        lib.slot_attention_node_grad.argtypes = [i64, i32, i64, i64] + [vp] * 8
        lib.link_scores.argtypes = [i64, i32, i64, i64, vp, vp, vp, ctypes.c_float, vp]
        for fn in (lib.slot_attention_forward, lib.slot_attention_backward, lib.slot_attention_node_grad,
                   lib.link_scores):
            fn.restype = None

    WB_BLOCK = 32  # roots per partial sum of the time encoding's gradients (fixed: see the C file)

    @staticmethod
    def threads(rows: int) -> int:
        """Threads for ``rows`` rows: torch's count, but at least ~64 rows each."""
        return max(1, min(torch.get_num_threads(), rows // 64))

    def link_scores(self, s: torch.Tensor, d: torch.Tensor, w: torch.Tensor, bias: float) -> torch.Tensor:
        """[B, Q] scores w . relu(s[b] + d[b, q]) + bias of s [B, D], d [B, Q, D] (no gradient)."""
        s, d, w = s.detach().contiguous(), d.detach().contiguous(), w.detach().contiguous()
        b, q, dim = d.shape
        out = s.new_empty(b, q)
        self.lib.link_scores(b, self.threads(b * q // 8), q, dim, ptr(s), ptr(d), ptr(w), bias, ptr(out))
        return out


def openmp_runtime() -> str | None:
    """Path of the OpenMP runtime this process runs (torch's), from the loaded objects."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:  # not Linux: no mapping list; the kernels run single-threaded
        return None
    found = sorted(p for p in paths if re.search(r"/lib(gomp|iomp5|omp)[^/]*\.so", p))
    return found[0] if found else None


def compiler_flags() -> list[str]:
    flags = ["-O3", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c11"]
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
    flags, runtime = compiler_flags(), openmp_runtime()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([source.read_text(), cc, *version, *flags, runtime or ""]).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    lib = out_dir / f"slot_attention-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # compiled with OpenMP but linked to torch's runtime itself (by path), not to the compiler's: the
    # loader then reuses the copy torch loaded, and the kernels share torch's threads
    compile_ = [cc, *flags, *(["-fopenmp"] if runtime else []), "-c", str(source)]
    link = ["-shared", *([runtime] if runtime else []), "-lm"]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for cmd in (compile_ + ["-o", f"{tmp}/k.o"], [cc, f"{tmp}/k.o", *link, "-o", f"{tmp}/k.so"]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{cc} failed on {source}: {proc.stderr.strip()[-2000:]}")
        os.replace(f"{tmp}/k.so", lib)  # atomic: a killed build leaves no library under the final name
    return lib


@functools.cache
def kernels() -> NativeKernels | None:
    """The native kernels, or None (disabled, or no compiler: the torch path runs instead)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    problem: Exception | None = None
    # a read-only or full cache folder (some cluster homes) falls back to a private temporary one
    for where in (cache_dir(), Path(tempfile.gettempdir()) / f"disttgl-{os.getuid()}"):
        try:
            lib = build(out_dir=where)
            kernels = NativeKernels(ctypes.CDLL(str(lib)))
        except OSError as exc:
            problem = exc
            continue
        except RuntimeError as exc:
            problem = exc
            break
        log.info("fused CPU attention kernels: %s", lib)
        return kernels
    log.warning("fused CPU attention kernels unavailable, using the slower torch path: %s", problem)
    return None
