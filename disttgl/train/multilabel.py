"""Multi-label edge classification (``--task edge-class`` on a 2-D ``events/label``, docs/design.md §13.1).

DistTGL's GDELT edge classes are multi-hot: every event holds a 0/1 row over C classes (any number of
them positive). :func:`multilabel_classes` checks such a matrix and picks the classes the model
learns (the columns with a positive in the train split); :class:`MultiLabelTask` trains them with
one logit per class and scores the indicator matrix of the decisions logit > 0
(:class:`~disttgl.train.metrics.MultiLabelMetrics`: F1-micro over all entries, F1-macro over the
train classes). :func:`disttgl.train.task.make_task` picks this task when the labels are 2-D.

The loss: ``bce`` (the default) is the multi-label likelihood, an independent Bernoulli per class
with its logit, which is also what the decision logit > 0 (probability > 0.5) thresholds. ``ce`` is
DistTGL's: softmax cross-entropy with the 0/1 row as soft target (-Σ_c y_c log softmax(z)_c), which
spreads one softmax over the positives; its logits are not per-class probabilities, yet DistTGL
thresholds them at 0 all the same.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from disttgl.cache.batch import Batch
from disttgl.errors import DataError
from disttgl.models.tgn import Features
from disttgl.train.metrics import MultiLabelMetrics

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # rows read at a time: GDELT's matrix is 191M x 52


def _split_counts(label: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positives per split and column [3, C], events per split [3], the first row holding a value
    other than 0 and 1 or -1), read ``_CHUNK`` rows at a time."""
    c = label.shape[1]
    pos, events, bad = np.zeros((3, c), np.int64), np.zeros(3, np.int64), -1
    for a in range(0, len(label), _CHUNK):
        part, s = np.asarray(label[a:a + _CHUNK]), np.asarray(split[a:a + _CHUNK])
        wrong = ((part != 0) & (part != 1)).any(1)
        if wrong.any():
            return pos, events, a + int(np.flatnonzero(wrong)[0])
        for k in range(3):
            m = s == k
            pos[k] += part[m].sum(0, dtype=np.int64)
            events[k] += int(m.sum())
    return pos, events, bad


def _unseen_events(label: np.ndarray, split: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Events per split [3] with a positive in a ``dropped`` column."""
    out = np.zeros(3, np.int64)
    if len(dropped):
        for a in range(0, len(label), _CHUNK):
            hit = np.asarray(label[a:a + _CHUNK][:, dropped]).any(1)
            out += np.bincount(np.asarray(split[a:a + _CHUNK])[hit], minlength=3)[:3]
    return out


def multilabel_classes(label: np.ndarray, split: np.ndarray, path: Any = None
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """(the classes learnt: column indices [k], info) of a 0/1 label matrix [E, C] and the split.

    The classes are the columns with at least one positive in the train split, in column order; the
    others are dropped (``info["dropped_classes"]``): the model has no output for them, so a val/test
    positive there is a false negative in F1-micro (``info["unseen_labels"]`` counts the events holding
    one, with a warning). ``info`` also holds the baseline: F1-micro on val and test of always
    predicting the train split's most frequent label alone (``majority_class``, a column index).

    Raises:
        DataError: naming ``path``: values other than 0 and 1 (the first such row), no train events,
        or fewer than two classes with a train positive.
    """
    if label.dtype.kind not in "iubf":
        raise DataError(path, f"event labels (events/label) have dtype {label.dtype}, not 0/1")
    pos, events, bad = _split_counts(label, split)
    if bad >= 0:
        raise DataError(path, f"row {bad} of the multi-label event labels (events/label) holds "
                              f"{np.asarray(label[bad]).tolist()[:20]}: a multi-label row is 0/1 per class")
    if events[0] == 0:
        raise DataError(path, "the train split has no events to learn classes from")
    kept = np.flatnonzero(pos[0] > 0)
    if len(kept) < 2:
        raise DataError(path, f"{len(kept)} of the {label.shape[1]} label columns have a positive in the train "
                              "split: multi-label edge classification needs at least two")
    dropped = np.flatnonzero(pos[0] == 0)
    major = int(kept[np.argmax(pos[0][kept])])  # ties: the lowest column
    info: dict[str, Any] = {"num_classes": len(kept), "multi_label": True, "label_columns": int(label.shape[1]),
                            "majority_class": major, "baseline": "the train split's most frequent label alone"}
    if len(kept) <= 100:
        info["class_values"] = kept.tolist()
    info["dropped_classes"] = dropped[:100].tolist()
    for s, name in ((1, "val"), (2, "test")):
        # one positive predicted per event: TP = that column's positives, FP = n - TP, FN = P - TP
        denom = events[s] + pos[s].sum()
        info[f"majority_{name}_f1_micro"] = float(2 * pos[s][major] / denom) if denom else 0.0
    unseen = _unseen_events(label, split, dropped)
    info["unseen_labels"] = {"val": int(unseen[1]), "test": int(unseen[2])}
    if unseen[1] or unseen[2]:
        log.warning("%s: %d val and %d test events have labels the train split never holds (columns %s): the "
                    "model cannot predict them and F1-micro counts them as false negatives", path, unseen[1],
                    unseen[2], ", ".join(map(str, dropped[:10].tolist())) + (", ..." if len(dropped) > 10 else ""))
    return kept, info


class ClassifierTask:
    """What the two edge-classification tasks share: a classifier head's logits per positive event, no
    negatives, the best epoch by F1-micro (single-label :class:`disttgl.train.task.EdgeClassTask`,
    multi-label :class:`MultiLabelTask`)."""

    name = "edge-class"
    negatives = False
    select = "f1_micro"

    @staticmethod
    def step(model: torch.nn.Module, batch: Batch, feats: Features, mem: torch.Tensor | None,
             mail: torch.Tensor | None) -> tuple[Any, torch.Tensor | None]:
        logits, new_memory = model.classify(batch, feats, mem, mail)
        return logits.float(), new_memory  # float32 under bf16 autocast too (a no-op otherwise)

    @staticmethod
    def finite(out: torch.Tensor) -> bool:
        return bool(torch.isfinite(out).all())


class MultiLabelTask(ClassifierTask):
    """Multi-label edge classification: one logit per train class for each positive event.

    Args:
        labels: uint8 [E, k] every event's 0/1 row over the k train classes, on the training device.
        missed: [E] each event's positives in the dropped columns (None: none dropped), same device.
        info: what ``summary.json`` records about the labels (:func:`multilabel_classes`).
        loss: ``bce`` (binary cross-entropy per class, the default) or ``ce`` (DistTGL's soft-target
            softmax cross-entropy): module docstring.
    """

    keys = ("f1_micro", "f1_macro", "exact_match")
    summary_keys = ("test_f1_micro", "test_f1_macro", "test_exact_match", "val_f1_micro", "val_f1_macro",
                    "val_exact_match")

    def __init__(self, labels: torch.Tensor, missed: torch.Tensor | None, info: dict[str, Any] | None = None,
                 loss: str = "bce"):
        if loss not in ("bce", "ce"):
            raise DataError(None, f"--loss must be bce or ce for multi-label edge classification, got {loss!r}")
        self.labels, self.missed, self.kind = labels, missed, loss
        self.num_classes = int(labels.shape[1])
        self.info = dict(info or {})

    def target(self, batch: Batch) -> torch.Tensor:
        return self.labels.index_select(0, batch.eid)

    def missed_of(self, batch: Batch) -> torch.Tensor:
        if self.missed is None:
            return torch.zeros(len(batch.eid), dtype=torch.int64, device=self.labels.device)
        return self.missed.index_select(0, batch.eid).long()

    def loss(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        y = self.target(batch).float()
        if self.kind == "ce":
            return F.cross_entropy(out, y)  # class probabilities as targets: -sum_c y_c log softmax(out)_c
        return F.binary_cross_entropy_with_logits(out, y)

    def metrics(self) -> "_MultiLabel":
        return _MultiLabel(self)

    @staticmethod
    def describe(m: dict[str, Any], split: str) -> str:
        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.4f}"

        micro, macro = m.get(f"{split}_f1_micro"), m.get(f"{split}_f1_macro")
        return f"{split} F1-micro {f(micro)} F1-macro {f(macro)} (multi-label)"

    def summary_fields(self) -> dict[str, Any]:
        return {"task": self.name, "multi_label_loss": self.kind, **self.info}


class _MultiLabel(MultiLabelMetrics):
    def __init__(self, task: MultiLabelTask):
        super().__init__()
        self.task = task

    def update(self, out: torch.Tensor, batch: Batch) -> None:  # type: ignore[override]
        super().update(out, self.task.target(batch), self.task.missed_of(batch))


def make_multilabel_task(label: np.ndarray, split: np.ndarray, loss: str, device: torch.device,
                         path: Any = None) -> MultiLabelTask:
    """The multi-label task on a 0/1 label matrix [E, C] (:func:`multilabel_classes`'s classes).

    Args:
        label: the graph's ``events/label`` [E, C].
        split: the graph's ``events/split``.
        loss: ``bce`` or ``ce`` (``--loss``).
        device: where the label rows live (gathered per batch on the training device).
        path: the graph file, named in errors.
    """
    kept, info = multilabel_classes(label, split, path)
    every = len(kept) == label.shape[1]
    rows = np.ascontiguousarray(label if every else label[:, kept]).astype(np.uint8, copy=False)
    missed = None
    if not every:
        dropped = np.setdiff1d(np.arange(label.shape[1]), kept)
        missed = torch.from_numpy(np.asarray(label[:, dropped]).sum(1, dtype=np.int32)).to(device)
    return MultiLabelTask(torch.from_numpy(rows).to(device), missed, info, loss)
