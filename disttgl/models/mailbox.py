"""APAN's node state, held outside the model: memory [N, d] and a mailbox of the S most recent mails
per node, behind the :class:`~disttgl.models.memory.Memory` interface (docs/design.md §12)
variants: JODIE and APAN").

A mail is [h_own ‖ h_partner ‖ edge_feat[eid]] with the time t of its event. The mailbox stores the
two memory halves [N, S, 2d], the event id [N, S] (edge features are looked up when read, so the
[E + 1, d_e] table is not copied S times per node), the time [N, S] (float64) and how many mails
each node has received; a node's slots form a ring written at ``count mod S``, so once full the
oldest mail is overwritten.

**Delivery** after a batch (:func:`deliveries`): event b (src_b -> dst_b at t_b) makes the mails
src_b: [h'_src ‖ h'_dst ‖ e_b] and dst_b: [h'_dst ‖ h'_src ‖ e_b] from the batch's new memory h'.
Each goes to its endpoint and to that endpoint's sampled neighbours in the batch (the root's
neighbour slots). In one batch a node keeps exactly one mail, the last in the order

    for b in the batch's events (time order): src_b's neighbours (slot order), dst_b's neighbours,
    then src_b itself, then dst_b itself,

so the most recent event wins and, within one event, a node's own mail beats a neighbour's copy.

**Reading** (:meth:`MailboxMemory.gather`): the mailboxes of the batch's root nodes only (APAN
embeds roots from their own memory; the sampled neighbours are only receivers), packed in one float
tensor [U_r, S, 2d + d_e + 2] = [mail ‖ age ‖ valid], age = t_ref - mail time in float64 (cast
after the subtraction), t_ref the batch's first event time: every stored mail comes from an earlier
batch, so ages are >= 0 and the same for every root of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disttgl.cache.batch import Batch
from disttgl.models.memory import write_rows


def root_nodes(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [U_r]: sorted indices into ``batch.nodes`` of the roots' nodes, inverse [R]: root -> row)."""
    rows, inverse = torch.unique(batch.root_idx, return_inverse=True)
    return rows, inverse


def reference_time(batch: Batch) -> torch.Tensor:
    """float64 scalar: the time mail ages are measured from (the batch's first event)."""
    return batch.t.min()


def deliveries(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Which mail each receiving node keeps from ``batch`` (the order in the module docstring).

    Returns (receivers [K]: distinct indices into ``batch.nodes``, sources [K]: the positive root
    in [0, 2B) whose mail the receiver keeps; root r < B is src_r's mail, r >= B is dst_(r-B)'s).
    """
    b = batch.num_events
    on_pos = batch.nbr_root < 2 * b
    r_nbr = batch.nbr_root[on_pos]
    m = r_nbr.shape[0]
    ends = torch.arange(2 * b, device=r_nbr.device)
    src = torch.cat([r_nbr, ends])
    recv = torch.cat([batch.nbr_idx[on_pos], batch.root_idx[:2 * b]])
    # group within an event: 0 src's neighbours, 1 dst's neighbours, 2 src, 3 dst
    group = torch.cat([(r_nbr >= b).long(), 2 + (ends >= b).long()])
    within = torch.cat([torch.arange(m, device=r_nbr.device), ends.new_zeros(2 * b)])  # slot order
    key = ((src % b) * 4 + group) * (m + 1) + within  # distinct for every delivery
    best = key.new_full((batch.nodes.shape[0],), -1).scatter_reduce(0, recv, key, "amax")
    keep = key == best[recv]
    return recv[keep], src[keep]


def unpack_mail(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mails [U_r, S, 2d + d_e], age [U_r, S], valid [U_r, S] bool) from :meth:`MailboxMemory.gather`'s mail."""
    return packed[..., :-2], packed[..., -2], packed[..., -1] > 0.5


@dataclass(frozen=True)
class MailWrite:
    """One batch's write to a mailbox, independent of the state it is applied to (the ring slot of a
    mail is chosen when it is applied), so a versioned mailbox (``disttgl.pipeline.stale_memory``) can
    apply it to its live state now and to its read state later."""

    nodes: torch.Tensor  # int64 [W]: the written roots' nodes (distinct)
    memory: torch.Tensor  # [W, d]: their new memory (detached)
    receivers: torch.Tensor  # int64 [K]: nodes receiving a mail (distinct)
    content: torch.Tensor  # [K, 2d]: [h'_own ‖ h'_partner] of the mail each keeps
    eid: torch.Tensor  # int64 [K]: its event
    t: torch.Tensor  # float64 [K]: its time


def mail_write(batch: Batch, new_memory: torch.Tensor) -> MailWrite:
    """The write of ``batch`` with new memory [U, d]: the ``write_mask`` roots' memory and the mails of
    :func:`deliveries`."""
    nodes, own, _ = write_rows(batch, new_memory)
    recv, src = deliveries(batch)
    b = batch.num_events
    h = new_memory.detach()
    partner = torch.where(src < b, src + b, src - b)
    content = torch.cat([h[batch.root_idx[src]], h[batch.root_idx[partner]]], 1)
    event = src % b
    return MailWrite(nodes, own, batch.nodes[recv], content, batch.eid[event], batch.t[event])


@dataclass
class MailboxMemory:
    memory: torch.Tensor  # float32 [N, d]
    mail: torch.Tensor  # float32 [N, S, 2d]: [h_own ‖ h_partner] of every stored mail
    mail_eid: torch.Tensor  # int64 [N, S]: its event (E, the zero feature row, when empty)
    mail_t: torch.Tensor  # float64 [N, S]: its time
    count: torch.Tensor  # int64 [N]: mails received; slots < min(count, S) are filled
    edge_feat: torch.Tensor  # float32 [E + 1, d_e]: data, not state (never reset or saved)

    @classmethod
    def zeros(cls, num_nodes: int, dim: int, edge_feat: torch.Tensor, mailbox_size: int = 10,
              device: torch.device | str | None = None) -> "MailboxMemory":
        """An empty mailbox of ``mailbox_size`` mails for each of ``num_nodes`` nodes."""
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be >= 1, got {mailbox_size}")
        n, s = num_nodes, mailbox_size
        none = edge_feat.shape[0] - 1
        return cls(memory=torch.zeros(n, dim, device=device), mail=torch.zeros(n, s, 2 * dim, device=device),
                   mail_eid=torch.full((n, s), none, dtype=torch.long, device=device),
                   mail_t=torch.zeros(n, s, dtype=torch.float64, device=device),
                   count=torch.zeros(n, dtype=torch.long, device=device), edge_feat=edge_feat.to(device))

    @property
    def dim(self) -> int:
        return int(self.memory.shape[1])

    @property
    def size(self) -> int:
        return int(self.mail.shape[1])

    def reset(self) -> None:
        self.memory.zero_()
        self.mail.zero_()
        self.mail_eid.fill_(self.edge_feat.shape[0] - 1)
        self.mail_t.zero_()
        self.count.zero_()

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [U, d] of the batch's unique nodes and the packed mailboxes [U_r, S, 2d + d_e + 2]
        of its root nodes (rows of :func:`root_nodes`)."""
        rows, _ = root_nodes(batch)
        g = batch.nodes[rows]
        slots = torch.arange(self.size, device=g.device)
        valid = slots < self.count[g].clamp(max=self.size).unsqueeze(1)
        age = (reference_time(batch) - self.mail_t[g]).float().masked_fill(~valid, 0.0)
        packed = torch.cat([self.mail[g], self.edge_feat[self.mail_eid[g]], age.unsqueeze(2),
                            valid.unsqueeze(2).to(age.dtype)], 2)
        return self.memory.index_select(0, batch.nodes), packed

    def read(self, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        return (batch, *self.gather(batch))  # always fresh: the cache's clock fields hold

    def write(self, batch: Batch, new_memory: torch.Tensor) -> None:
        """Store the ``write_mask`` roots' new memory (detached), then deliver the batch's mails."""
        self.apply(mail_write(batch, new_memory))

    def apply(self, w: "MailWrite") -> None:
        """Apply one batch's write: its roots' memory, then one mail per receiver at slot ``count mod S``."""
        self.memory[w.nodes] = w.memory.to(self.memory.dtype)
        v = w.receivers  # distinct: one mail per receiver
        pos = self.count[v] % self.size
        self.mail[v, pos] = w.content.to(self.mail.dtype)
        self.mail_eid[v, pos] = w.eid
        self.mail_t[v, pos] = w.t.to(self.mail_t.dtype)
        self.count[v] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).cpu() for k in ("memory", "mail", "mail_eid", "mail_t", "count")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in ("memory", "mail", "mail_eid", "mail_t", "count"):
            getattr(self, k).copy_(state[k])
