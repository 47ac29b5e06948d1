"""``disttgl launch``: start i x j x k training with torchrun, on this machine or in a SLURM allocation.

One node: ``torchrun --standalone --nproc-per-node P -m disttgl.train ...``. Several nodes (inside a
SLURM job): ``srun`` starts one torchrun per node, which meet through c10d rendezvous on the first
node of the allocation. Everything after ``--`` goes to ``disttgl train`` (or, with ``--program
snapshot-train``, to ``disttgl snapshot-train``, which then needs its ``--parallel``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from disttgl.errors import DataError
from disttgl.lifetime import child_exits_with_parent


def torchrun_args(nodes: int, nproc: int, *, head: str | None = None, port: int = 29500, run_id: str = "disttgl",
                  max_restarts: int = 0) -> list[str]:
    """The torchrun options (without the program) for ``nodes`` x ``nproc`` ranks."""
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}"]
    if nodes == 1:
        return base + ["--standalone"]
    if not head:
        raise ValueError("several nodes need the rendezvous host (the allocation's first node)")
    return base + [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}", f"--rdzv-id={run_id}"]


def slurm_head(env: dict[str, str]) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise DataError(None, "several nodes need a SLURM allocation (SLURM_JOB_NODELIST is not set); "
                              "outside SLURM start torchrun on every node yourself")
    if "[" not in nodelist and "," not in nodelist:
        return nodelist  # a single host name
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


# the commands a launch may run on every rank
PROGRAMS = {"train": ["-m", "disttgl.train"], "snapshot-train": ["-m", "disttgl", "snapshot-train"]}


def command(nodes: int, nproc: int, train_args: list[str], *, env: dict[str, str] | None = None, port: int = 29500,
            max_restarts: int = 0, program: str = "train") -> list[str]:
    """The full command line: torchrun alone on one node, ``srun`` + torchrun per node on several.

    Args:
        program: which command every rank runs (a key of ``PROGRAMS``), with ``train_args``.
    """
    env = dict(os.environ if env is None else env)
    program = [*PROGRAMS[program], *train_args]
    if nodes == 1:
        return torchrun_args(1, nproc, max_restarts=max_restarts) + program
    job = env.get("SLURM_JOB_ID", "disttgl")
    tr = torchrun_args(nodes, nproc, head=slurm_head(env), port=port, run_id=f"disttgl-{job}",
                       max_restarts=max_restarts)
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            *tr, *program]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="machines (several: inside a SLURM allocation)")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="trainers per machine")
    parser.add_argument("--port", type=int, default=29500, help="c10d rendezvous port on the first node")
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a failure "
                        "(pass --resume to train so a restart continues from the checkpoint)")
    parser.add_argument("--program", choices=sorted(PROGRAMS), default="train",
                        help="what every rank runs: disttgl train (default) or disttgl snapshot-train")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the `disttgl train` arguments")


def run(args: argparse.Namespace) -> int:
    rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.nodes < 1 or args.nproc_per_node < 1:
        raise DataError(None, "--nodes and --nproc-per-node must be >= 1")
    cmd = command(args.nodes, args.nproc_per_node, rest, port=args.port, max_restarts=args.max_restarts,
                  program=args.program)
    print(shlex.join(cmd), file=sys.stderr if not args.dry_run else sys.stdout, flush=True)
    if args.dry_run:
        return 0
    # torchrun dies with us (and its ranks with it: disttgl.parallel.torchrun), never orphaned by a kill
    return subprocess.run(cmd, preexec_fn=child_exits_with_parent).returncode
