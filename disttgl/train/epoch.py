"""One training pass and one evaluation pass over cached batches: the step every strategy runs.

Training (docs/design.md §4): for each batch, gather the memory of its nodes, predict, check the
loss is finite, step the optimizer, then write the batch's memory (detached). Evaluation runs the
same forward pass without gradients and writes memory as training does. A non-finite loss or score
stops the run with a :class:`NonFiniteError` naming the step and what holds non-finite values,
rather than training on or reporting NaN as a metric.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from tqdm import tqdm

from disttgl.cache.batch import Batch
from disttgl.data.graph_map import map_graph
from disttgl.errors import DataError
from disttgl.models.memory import Memory
from disttgl.models.tgn import TGN, Features, ModelConfig
from disttgl.models.variants import HEADS
from disttgl.train.config import TrainConfig
from disttgl.train.precision import autocast
from disttgl.train.static_table import load_static
from disttgl.train.task import LinkTask


@dataclass
class EpochStats:
    loss: float = 0.0
    events: int = 0
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=lambda: dict(load=0.0, forward=0.0, backward=0.0,
                                                                   memory=0.0))

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

class NonFiniteError(DataError):
    """A NaN or inf training loss or evaluation score: the step and the likely source are named."""


def non_finite_parameters(model: torch.nn.Module) -> str | None:
    """Which of ``model``'s parameters and buffers hold NaN or inf, as one phrase; None if none do."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    params = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not params:
        return None
    return (f"model parameters ({len(params)} of {len(tensors)}: {', '.join(params[:4])}"
            f"{', ...' if len(params) > 4 else ''}; a corrupted checkpoint?)")


def non_finite_error(what: str, *, split: str | None, epoch: int | None, batch: int, model: torch.nn.Module,
                     feats: Features, mem: torch.Tensor | None = None,
                     mail: torch.Tensor | None = None) -> NonFiniteError:
    """The error for a non-finite ``what`` at ``batch``, listing every input that is non-finite.

    Raised before the optimizer step and the memory write, so what is listed was non-finite when
    the value was computed (inputs first: they are the likelier source).
    """
    found = []

    def rows(name: str, t: torch.Tensor | None) -> None:
        if t is not None and t.numel():
            bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).sum())
            if bad:
                found.append(f"{name} ({bad} of {len(t)} rows)")

    rows("the static memory table (--static)", feats.static)
    rows("edge features", feats.edge_feat)
    rows("node features", feats.node_feat)
    rows("this batch's memory rows", mem)
    rows("this batch's mailbox rows", mail)
    params = non_finite_parameters(model)
    if params:
        found.append(params)
    where = ", ".join([*([f"epoch {epoch}"] if epoch is not None else []), f"batch {batch}",
                       *([f"{split} split"] if split else [])])
    source = ("non-finite values in " + "; ".join(found) if found else
              "no input, memory row or parameter is non-finite: training diverged (try a lower --lr)")
    return NonFiniteError(None, f"non-finite {what} at {where}: {source}; stopping")

def static_graph_sha256(attrs: dict[str, Any]) -> str:
    """The graph a static table must come from: a TMA part store (same global node ids, a subset of the
    events) takes its whole graph's table, as its trainers share one (docs/design.md §14.3)."""
    return str(attrs.get("parent_sha256") or attrs.get("sha256", ""))


def load_features(graph_path: str, device: torch.device, static: str | None = None) -> tuple[Features, Any]:
    """The model's data-side tensors on ``device``, and the graph (its events and T-CSR memory-mapped:
    training reads the features and the counts, not the adjacency)."""
    graph = map_graph(graph_path, features=True)
    feats = Features(
        edge_feat=torch.from_numpy(graph.edge_feat).float().to(device),
        node_feat=None if graph.node_feat is None else torch.from_numpy(graph.node_feat).float().to(device),
        static=None if static is None else load_static(static, graph.num_nodes,
                                                       graph_sha256=static_graph_sha256(graph.attrs)).to(device))
    return feats, graph


def model_config(cfg: TrainConfig, graph: Any, feats: Features, memory: str | None = None,
                 classes: int = 0) -> ModelConfig:
    """The model of ``cfg`` on ``graph``; ``memory``: None (``cfg.memory``) or "table" (pretraining:
    the table feeds ``cfg.memory``'s embedding head); ``classes``: 0 (link prediction) or the edge
    classifier's number of classes (the task's ``num_classes``)."""
    return ModelConfig(dim=cfg.dim, time_dim=cfg.time_dim, heads=cfg.heads, dropout=cfg.dropout,
                       edge_dim=graph.edge_dim, node_dim=graph.node_dim,
                       static_dim=0 if feats.static is None else int(feats.static.shape[1]),
                       static_dropout=cfg.static_dropout,
                       memory=cfg.memory if memory is None else memory, num_nodes=graph.num_nodes,
                       mailbox_size=cfg.mailbox_size, head=HEADS.get(cfg.memory, ""), classes=classes)


def train_epoch(model: TGN, memory: Memory | None, batches: Iterable[Batch],
                optimizer: torch.optim.Optimizer, feats: Features, *, loss: str = "ce", task: Any = None,
                progress: tqdm | None = None, sync: bool = False, epoch: int | None = None,
                precision: str = "fp32") -> EpochStats:
    """One pass over ``batches``: predict, step, then write memory (GRU model only).

    ``task`` (:mod:`disttgl.train.task`): how the model is called and its loss; None: link
    prediction with ``loss``. ``precision`` "bf16" runs the forward pass under bf16 autocast
    (:mod:`disttgl.train.precision`); the task's outputs and the loss are float32. A non-finite loss
    raises :class:`NonFiniteError` (``epoch`` only names the step in it)."""
    task = LinkTask(loss) if task is None else task
    model.train()
    stats = EpochStats()
    total_loss, steps = 0.0, 0
    cuda = sync and feats.edge_feat.is_cuda
    clock = time.perf_counter
    start = t0 = clock()
    it: Iterator[Batch] = iter(batches)
    while True:
        batch = next(it, None)
        t1 = clock()
        if batch is None:
            break
        batch, mem, mail = memory.read(batch) if memory is not None else (batch, None, None)
        with autocast(precision, feats.edge_feat.device):
            out, new_mem = task.step(model, batch, feats, mem, mail)
        step_loss = task.loss(out, batch)
        # checked before the step: a NaN would spread to every parameter and memory row. The float()
        # is the one sync per step that used to come after the step.
        value = float(step_loss.detach())
        if not math.isfinite(value):
            raise non_finite_error(f"training loss ({value})", split="train", epoch=epoch, batch=steps,
                                   model=model, feats=feats, mem=mem, mail=mail)
        if cuda:
            torch.cuda.synchronize()
        t2 = clock()
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        t3 = clock()
        if memory is not None:
            memory.write(batch, new_mem)
        total_loss += value
        t4 = clock()
        for k, dt in zip(stats.timing, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stats.timing[k] += dt
        steps += 1
        stats.events += batch.num_events
        t0 = t4
        if progress is not None:
            progress.update(batch.num_events)
            progress.set_postfix(loss=f"{total_loss / steps:.4f}", ev_s=f"{stats.events / (t4 - start):,.0f}",
                                 refresh=False)
    stats.seconds = clock() - start
    stats.loss = total_loss / max(steps, 1)
    return stats


@torch.inference_mode()
def evaluate(model: TGN, memory: Memory | None, batches: Iterable[Batch], feats: Features, *,
             split: str | None = None, epoch: int | None = None, task: Any = None,
             precision: str = "fp32") -> dict[str, float]:
    """The task's metrics over ``batches`` (link: ap, mrr, ap_1neg; edge-class: f1_micro, f1_macro,
    accuracy); memory is updated as in training. ``precision`` as in :func:`train_epoch` (the
    outputs are float32 either way).

    Non-finite scores raise :class:`NonFiniteError` (``split`` and ``epoch`` only name the step)."""
    task = LinkTask() if task is None else task
    model.eval()
    acc = task.metrics()
    for b, batch in enumerate(batches):
        batch, mem, mail = memory.read(batch) if memory is not None else (batch, None, None)
        with autocast(precision, feats.edge_feat.device):
            out, new_mem = task.step(model, batch, feats, mem, mail)
        if not task.finite(out):
            raise non_finite_error("scores", split=split or "evaluation", epoch=epoch, batch=b, model=model,
                                   feats=feats, mem=mem, mail=mail)
        if memory is not None:
            memory.write(batch, new_mem)
        acc.update(out, batch)
    return acc.compute()


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA): one pass per parameter instead of a dozen ops."""
    return torch.optim.Adam(params, lr=lr, fused=True)