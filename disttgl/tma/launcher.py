"""How a TMA run starts its trainers (docs/design.md §14.6): as child processes on this machine
(``local``), or as one SLURM job step each inside the run's allocation (``srun``).

One step per trainer, not one step of P tasks: SLURM ends a whole step when one of its tasks
fails, and a trainer's death must not end the others. ``--exact`` gives each step only the CPUs it
asks for, so the steps of one allocation run side by side (and a restarted trainer's step takes the
CPUs its dead one freed); ``--kill-on-bad-exit=0`` states the intent. The coordinator and the
Lighthouse stay in the batch step on the allocation's first node; the trainers reach the
Lighthouse by that node's host name.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass

from disttgl.errors import DataError

LAUNCHERS = ("auto", "local", "srun")
STEP_ENV = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURMD_NODENAME")  # what a trainer records of its step


@dataclass(frozen=True)
class Launcher:
    """Args:
        kind: ``local`` or ``srun``.
        threads: CPUs per trainer (its ``--threads``; the step's ``--cpus-per-task``).
    """

    kind: str
    threads: int = 1

    def trainer_command(self, part: int, attempt: int, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` (the trainer's own) as trainer ``part``, attempt ``attempt``."""
        if self.kind == "local":
            return list(argv)
        return ["srun", "--ntasks=1", "--nodes=1", f"--cpus-per-task={self.threads}", "--exact",
                "--kill-on-bad-exit=0", f"--job-name=tma-trainer-{part}.{attempt}", *argv]

    def host(self) -> str:
        """The name this process is reached by from the run's other processes: the Lighthouse's (it runs
        beside the coordinator) and each trainer's store (the quorum hands it to the peers) alike;
        ``localhost`` on one machine, the node's host name under srun (peers on other nodes)."""
        return "localhost" if self.kind == "local" else socket.gethostname()


def resolve_launcher(choice: str, threads: int, env: dict[str, str] | None = None) -> Launcher:
    """``auto``: ``srun`` inside a SLURM allocation (``SLURM_JOB_ID`` set and ``srun`` on the PATH),
    else ``local``; ``srun`` outside an allocation is an error.

    Args:
        choice: ``auto``, ``local`` or ``srun`` (``disttgl tma --launcher``).
        threads: CPUs per trainer.
        env: the environment (default: this process's).
    """
    env = dict(os.environ if env is None else env)
    if choice not in LAUNCHERS:
        raise DataError(None, f"--launcher must be one of {', '.join(LAUNCHERS)}, got {choice!r}")
    in_slurm = bool(env.get("SLURM_JOB_ID")) and shutil.which("srun", path=env.get("PATH")) is not None
    if choice == "srun" and not in_slurm:
        raise DataError(None, "--launcher srun needs a SLURM allocation (SLURM_JOB_ID is not set or srun is not "
                              "on the PATH): run inside sbatch/salloc, or use --launcher local")
    kind = "srun" if choice == "srun" or (choice == "auto" and in_slurm) else "local"
    return Launcher(kind, max(1, int(threads)))


def step_record(env: dict[str, str] | None = None) -> dict[str, str]:
    """Where this trainer runs: host, pid and, under SLURM, its job, step and node."""
    env = dict(os.environ if env is None else env)
    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            **{k.lower(): env[k] for k in STEP_ENV if env.get(k)}}
