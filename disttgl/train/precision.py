"""``--precision fp32|bf16``: the arithmetic of a training or evaluation forward pass.

``bf16`` runs the forward pass under ``torch.autocast(dtype=torch.bfloat16)`` on CPU and CUDA:
matrix products (Linear, addmm, bmm) take bf16 inputs and give bf16 outputs, so their backward
passes run in bf16 too. Everything that carries state stays float32 (docs/design.md §4.8): the
weights and Adam's moments (autocast casts a bf16 copy of a weight per forward pass; the gradient
reaching the float32 weight is float32), the memory updaters whole (GRU, RNN cell, APAN's mail
attention: ``disttgl.models.kernels.float32_forward``; their rounding would compound over the stream),
the node memory and mailbox (every memory's ``write`` casts its rows to the table's dtype), the time
encoding, the attention's per-slot core (``disttgl.models.kernels.slot_attention`` turns autocast
off and casts its inputs: the CPU C kernels read float32 only), the link scores (summed in
float32: bf16 would tie a positive with its negatives) and the loss.

``fp32`` enters no autocast region at all, so its arithmetic is exactly what it was before the
option existed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

from disttgl.errors import DataError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: str) -> None:
    """Refuse an unknown precision, or bf16 on a CUDA device without bf16 support.

    Args:
        precision: ``fp32`` or ``bf16``.
        device: the run's device (``cpu``, ``cuda``, ``cuda:N``).
    """
    if precision not in PRECISIONS:
        raise DataError(None, f"--precision must be fp32 or bf16, got {precision!r}")
    if precision == "bf16" and device.startswith("cuda") and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        raise DataError(None, f"--precision bf16: {torch.cuda.get_device_name(torch.device(device))} has no bf16 "
                              "support; use --precision fp32")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN finds bf16 matrix instructions (AVX-512 BF16 or AMX) on this CPU; without them
    bf16 matmuls are emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """The context a forward pass runs in: bf16 autocast on ``device``'s type, or (fp32) nothing.

    Args:
        precision: ``fp32`` or ``bf16``.
        device: where the model runs.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r} (fp32 or bf16)")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def log_precision(precision: str, device: torch.device | str) -> None:
    """Say what bf16 will run on (a CPU without native bf16 runs it slower than fp32)."""
    if precision != "bf16":
        return
    kind = torch.device(device).type
    if kind == "cpu" and not cpu_has_native_bf16():
        log.warning("--precision bf16: this CPU has no AVX-512 BF16 or AMX, bf16 matmuls are emulated "
                    "and likely slower than fp32")
    else:
        log.info("--precision bf16: matmuls in bf16 on %s; weights, optimizer state, memory and mail in fp32",
                 kind)
