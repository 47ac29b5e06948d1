"""What a run learns and how it is scored (``--task link|edge-class``, docs/design.md §13).

A task tells the one training and evaluation pass (:mod:`disttgl.train.epoch`) how to call the
model, its loss and its metrics, and tells the loop (:mod:`disttgl.train.fit`) which validation
metric selects the best epoch and which keys the run's files hold:

- :class:`LinkTask`: link prediction, as before (scores of positives against the cache's negatives;
  BCE or softmax CE; ``ap``, ``mrr``, ``ap_1neg``; selection on val MRR);
- :class:`EdgeClassTask`: the class of every positive event from ``events/label`` (the model's
  :class:`~disttgl.models.edge_head.EdgeClassifier`; cross-entropy; ``f1_micro``, ``f1_macro``,
  ``accuracy``; selection on val F1-micro). Batches are read without negatives: the loss does not
  need them, and memory is written from the positives only in either task, so the memory a
  batch leaves behind is the same (tests/test_edge_class.py checks it);
- :class:`~disttgl.train.multilabel.MultiLabelTask`: the same with a 0/1 label matrix [E, C]
  (DistTGL's GDELT classes, several per event): one logit per class, BCE (or ``--loss ce``), F1 over
  the indicator matrix of logit > 0 (§13.1).

:func:`make_task` builds the run's task from its settings and graph. Classes are the distinct labels
of the train split, numbered in sorted order. No labels, labels that are not integers, or fewer than
two classes in train are errors naming the graph file; val/test labels never seen in train are a
warning (the model cannot predict them, so they count as errors in every metric, and
``summary.json`` records how many there were).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from disttgl.cache.batch import Batch
from disttgl.errors import DataError
from disttgl.models.tgn import Features, link_loss
from disttgl.train.metrics import ClassMetrics, RankingMetrics
from disttgl.train.multilabel import ClassifierTask, MultiLabelTask, make_multilabel_task, multilabel_classes

log = logging.getLogger(__name__)

TASKS = ("link", "edge-class")


class LinkTask:
    """Link prediction: positives ranked against the cache's negatives (the default task)."""

    name = "link"
    negatives = True  # batches are read with their negatives
    num_classes = 0  # ModelConfig.classes: the link predictor
    keys = ("ap", "mrr", "ap_1neg")  # what evaluate returns, in the rows' order
    select = "mrr"  # the validation metric that picks the best epoch
    summary_keys = ("test_ap", "test_mrr", "test_ap_1neg", "val_mrr", "val_ap")

    def __init__(self, loss: str = "bce"):
        self.kind = loss

    def step(self, model: torch.nn.Module, batch: Batch, feats: Features, mem: torch.Tensor | None,
             mail: torch.Tensor | None) -> tuple[Any, torch.Tensor | None]:
        pos, neg, new_memory = model(batch, feats, mem, mail)
        return (pos.float(), neg.float()), new_memory  # float32 under bf16 autocast too (no-ops otherwise)

    def loss(self, out: Any, batch: Batch) -> torch.Tensor:
        return link_loss(out[0], out[1], self.kind)

    @staticmethod
    def finite(out: Any) -> bool:
        return bool(torch.isfinite(out[0]).all() & torch.isfinite(out[1]).all())  # one sync per batch

    def metrics(self) -> "_Ranking":
        return _Ranking()

    @staticmethod
    def describe(m: dict[str, Any], split: str) -> str:
        one = f" AP(1 neg) {_f(m.get(f'{split}_ap_1neg'))}" if f"{split}_ap_1neg" in m else ""
        return f"{split} AP {_f(m.get(f'{split}_ap'))} MRR {_f(m.get(f'{split}_mrr'))}{one}"

    def summary_fields(self) -> dict[str, Any]:
        return {}


class _Ranking(RankingMetrics):
    def update(self, out: Any, batch: Batch) -> None:  # type: ignore[override]
        super().update(out[0], out[1])


class EdgeClassTask(ClassifierTask):
    """Edge classification: the class of each positive event, from its endpoints' embeddings.

    Args:
        labels: int [E] every event's class index (0..C-1 for the train split's classes, C and up
            for labels only val/test hold), on the training device.
        num_classes: C.
        info: what ``summary.json`` records about the labels (:func:`label_classes`).
    """

    keys = ("f1_micro", "f1_macro", "accuracy")
    summary_keys = ("test_f1_micro", "test_f1_macro", "test_accuracy", "val_f1_micro", "val_f1_macro",
                    "val_accuracy")

    def __init__(self, labels: torch.Tensor, num_classes: int, info: dict[str, Any] | None = None):
        self.labels, self.num_classes, self.info = labels, num_classes, dict(info or {})

    def target(self, batch: Batch) -> torch.Tensor:
        return self.labels.index_select(0, batch.eid).long()

    def loss(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(out, self.target(batch))  # training batches hold train labels: all < C

    def metrics(self) -> "_Classes":
        return _Classes(self)

    @staticmethod
    def describe(m: dict[str, Any], split: str) -> str:
        return f"{split} F1-micro {_f(m.get(f'{split}_f1_micro'))} F1-macro {_f(m.get(f'{split}_f1_macro'))}"

    def summary_fields(self) -> dict[str, Any]:
        return {"task": self.name, **self.info}


class _Classes(ClassMetrics):
    def __init__(self, task: EdgeClassTask):
        super().__init__()
        self.task = task

    def update(self, out: torch.Tensor, batch: Batch) -> None:  # type: ignore[override]
        super().update(out, self.task.target(batch))


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def label_classes(label: np.ndarray | None, split: np.ndarray, path: Any = None
                  ) -> tuple[np.ndarray, int, dict[str, Any]]:
    """(class index [E], C, info) from every event's label and split (0 train, 1 val, 2 test).

    A 2-D label (a multi-label 0/1 matrix [E, C]) gives (the train classes' column indices [k], k,
    info) instead (:func:`~disttgl.train.multilabel.multilabel_classes`), so one call checks either.

    The classes are the train split's distinct labels in sorted order (index 0..C-1); a val/test
    label not among them gets an index >= C (one per distinct value), so it is never predicted and
    counts as an error. ``info``: ``num_classes``, ``class_values`` (up to 100), the train split's
    most frequent class and the F1-micro of always predicting it on val and test (the majority
    baseline), and the val/test events whose label train never holds (``unseen_labels``).

    Raises:
        DataError: naming ``path``: no labels, non-integer labels, no train events or fewer than two
        train classes.
    """
    if label is None:
        raise DataError(path, "the graph store has no event labels (events/label): --task edge-class needs "
                              "them (convert a format with labels: jodie's state label, tgn's label column, "
                              "csv --label-col, tgl's labels.csv or ec_edge_class.pt, pyg's y; `disttgl synth` "
                              "writes them unless --labels 0)")
    if np.ndim(label) == 2:
        kept, info = multilabel_classes(label, split, path)
        return kept, len(kept), info
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise DataError(path, "event labels (events/label) are not whole numbers: --task edge-class "
                                  "classifies events into integer classes")
    elif label.dtype.kind not in "iub":
        raise DataError(path, f"event labels (events/label) have dtype {label.dtype}, not integers")
    label = label.astype(np.int64)
    train = label[split == 0]
    if len(train) == 0:
        raise DataError(path, "the train split has no events to learn classes from")
    classes, counts = np.unique(train, return_counts=True)
    k = len(classes)
    if k < 2:
        raise DataError(path, f"the train split's events all have label {classes[0]}: --task edge-class needs "
                              "at least two classes")
    pos = np.minimum(np.searchsorted(classes, label), k - 1)
    seen = classes[pos] == label
    index = pos.copy()
    unseen_values = np.unique(label[~seen])
    index[~seen] = k + np.searchsorted(unseen_values, label[~seen])
    major = int(np.argmax(counts))  # ties: the smallest label, as the model's argmax
    info: dict[str, Any] = {"num_classes": k, "majority_class": classes[major].item()}
    if k <= 100:
        info["class_values"] = classes.tolist()
    for s, name in ((1, "val"), (2, "test")):
        m = split == s
        info[f"majority_{name}_f1_micro"] = float(np.mean(index[m] == major)) if m.any() else 0.0
    unseen = {name: int((~seen & (split == s)).sum()) for s, name in ((1, "val"), (2, "test"))}
    info["unseen_labels"] = unseen
    if any(unseen.values()):
        log.warning("%s: %d val and %d test events have labels the train split never holds (%s): the model "
                    "cannot predict them and every metric counts them as errors", path, unseen["val"],
                    unseen["test"], ", ".join(map(str, unseen_values[:10].tolist()))
                    + (", ..." if len(unseen_values) > 10 else ""))
    return index, k, info


def make_task(name: str, loss: str, label: np.ndarray | None, split: np.ndarray, device: torch.device,
              path: Any = None) -> LinkTask | EdgeClassTask | MultiLabelTask:
    """The run's task: ``name`` (``link`` with ``loss``, or ``edge-class``) on a graph's labels and split;
    ``edge-class`` on a 2-D label (a 0/1 matrix [E, C]) is multi-label (:class:`MultiLabelTask`).

    Args:
        name: one of :data:`TASKS`.
        loss: the link task's loss (bce or ce), and the multi-label task's (bce: per-class binary CE; ce:
            DistTGL's soft-target softmax CE); single-label edge classification always uses cross-entropy.
        label: the graph's ``events/label`` (None when it has none).
        split: the graph's ``events/split``.
        device: where the class indices live (gathered per batch on the training device).
        path: the graph file, named in errors.
    """
    if name == "link":
        return LinkTask(loss)
    if name != "edge-class":
        raise DataError(None, f"--task must be one of {', '.join(TASKS)}, got {name!r}")
    if label is not None and np.ndim(label) == 2:
        return make_multilabel_task(label, split, loss, device, path)
    index, k, info = label_classes(label, split, path)
    dtype = torch.int32 if int(index.max()) < 2 ** 31 - 1 else torch.int64  # GDELT: 191M events
    return EdgeClassTask(torch.from_numpy(index).to(dtype).to(device), k, info)
