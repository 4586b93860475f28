"""Pure loss functions of SimLM (paper sections 3-4 and the original trainers).

Everything here is a function of tensors only; the one piece of process state that is read is the
world size / rank (through :mod:`simlm.distributed`) inside :func:`contrastive_loss`.

Gradient accounting of the contrastive loss across W ranks (B local queries each, N = W·B):
write the global mean loss as L = (1/N) Σ_i ℓ_i(e_0, ..., e_{W-1}), where e_r are the embeddings
computed on rank r. After the all-gather only e_r is differentiable on rank r, and DDP averages the
parameter gradients over ranks.

- ``scaled=True`` (SimLM ``use_scaled_loss``): rank r back-propagates W·L, i.e. W·∂L/∂e_r. The DDP
  average is (1/W) Σ_r W·∂L/∂e_r = Σ_r ∂L/∂e_r = ∂L/∂θ: **exactly the gradient of the global mean loss**.
- ``scaled=False``: rank r back-propagates (1/B) Σ_{i local} ℓ_i through e_r only. The DDP average is
  (1/N) Σ_r Σ_{i on r} ∂ℓ_i/∂e_r, which **drops the cross terms** ∂ℓ_i/∂e_r for rows i of other ranks
  (e.g. rank r's passages acting as in-batch negatives of rank s's queries). The averaged loss *value*
  equals the global mean, but the gradient does not (unless W = 1). ``tests/test_distributed.py``
  checks both statements with 2 gloo processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simlm.distributed import gather_with_grad, rank, world_size

__all__ = [
    "contrastive_logits",
    "contrastive_loss",
    "contrastive_targets",
    "inbatch_metrics",
    "kd_loss",
    "listwise_ce",
    "mask_hard_negatives",
    "own_group_logits",
    "rdrop_loss",
    "select_hard_passages",
    "temperature_at",
    "token_ce",
]

_NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------ contrastive


def contrastive_targets(
    num_rows: int, n: int, row_offset: int = 0, device: torch.device | None = None
) -> Tensor:
    """Target columns of rows ``row_offset .. row_offset + num_rows - 1``: column ``i * n`` for row i."""
    return (torch.arange(num_rows, device=device) + row_offset) * n


def contrastive_logits(q: Tensor, p: Tensor, n: int, temperature: float, full: bool = True) -> Tensor:
    """SimLM's (full) contrastive score matrix (`src/utils.py` of the original).

    Args:
        q: query embeddings ``[N, d]`` (all queries of the global batch).
        p: passage embeddings ``[N * n, d]``; passages ``i*n .. i*n + n - 1`` are query i's group and
            ``p[i * n]`` is its positive p⁺_i.
        n: passages per query (``train_n_passages``).
        temperature: τ > 0; the whole matrix is divided by it (−inf entries stay −inf).
        full: ``full_contrastive_loss``; False keeps only the q·p block.

    Returns:
        ``[N, N*n + 3N]`` (``[N, N*n]`` when ``full=False``) with row i =
        ``[q_i·p_j (all j) | p⁺_i·q_k | q_i·q_k | p⁺_i·p⁺_k] / τ`` and the k = i entries of the last
        three blocks set to −inf. The target of row i is column ``i * n``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_q = q.shape[0]
    if n < 1 or p.shape[0] != num_q * n:
        raise ValueError(f"expected {num_q} * {n} passages, got {p.shape[0]}")
    logits = q @ p.T
    if full:
        pos = p[::n]
        eye = torch.eye(num_q, dtype=torch.bool, device=q.device)
        pq = (pos @ q.T).masked_fill(eye, _NEG_INF)
        qq = (q @ q.T).masked_fill(eye, _NEG_INF)
        pp = (pos @ pos.T).masked_fill(eye, _NEG_INF)
        logits = torch.cat([logits, pq, qq, pp], dim=1)
    return logits / temperature


def mask_hard_negatives(logits: Tensor, n: int, row_offset: int = 0) -> Tensor:
    """SimLM's ``kd_mask_hn``: set row i's own hard-negative columns to −inf (out of place).

    Row i of ``logits`` is global row ``g = row_offset + i``; its columns ``g*n + 1 .. g*n + n - 1``
    (its own sampled negatives in the q·p block) become −inf. The positive and all other columns stay.
    """
    rows, cols = logits.shape
    g = torch.arange(rows, device=logits.device).unsqueeze(1) + row_offset
    c = torch.arange(cols, device=logits.device).unsqueeze(0)
    mask = (c // n == g) & (c % n != 0)
    return logits.masked_fill(mask, _NEG_INF)


def own_group_logits(logits: Tensor, n: int, row_offset: int = 0) -> Tensor:
    """Columns ``g*n .. g*n + n - 1`` of each row (g = row_offset + i): the query's own group ``[B, n]``.

    This is the student input of :func:`kd_loss` (positive first, then the sampled negatives).
    """
    idx = contrastive_targets(logits.shape[0], n, row_offset, logits.device).unsqueeze(1)
    idx = idx + torch.arange(n, device=logits.device).unsqueeze(0)
    return torch.gather(logits, 1, idx)


def contrastive_loss(
    q_local: Tensor,
    p_local: Tensor,
    n: int,
    temperature: float,
    full: bool = True,
    scaled: bool = True,
    mask_own_hard_negatives: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """SimLM's bi-encoder contrastive loss over the all-gathered batch (the original `src/models/biencoder_model.py`).

    ``q_local [B, d]`` and ``p_local [B*n, d]`` are this rank's embeddings; every rank must have the
    same B. They are gathered with :func:`~simlm.distributed.gather_with_grad` (only the local slice is
    differentiable) and :func:`contrastive_logits` is built on the global batch of N = W·B queries.

    Args:
        n: passages per query; temperature: τ; full: ``full_contrastive_loss``.
        scaled: ``use_scaled_loss``. True: mean CE over **all N global rows** multiplied by W (or by
            ``scale``). After DDP's gradient averaging this is *exactly* the gradient of the global mean
            loss (see the module docstring). False: mean CE over the B local rows only (their slice of
            the global matrix), no factor; its DDP-averaged gradient misses the cross-rank terms and is
            exact only when W = 1.
        mask_own_hard_negatives: ``kd_mask_hn`` (training only; the caller decides): before the local
            CE, set each local row's own hard-negative columns to −inf. Only valid with ``scaled=False``
            (SimLM asserts the same), otherwise ``ValueError``.
        scale: ``loss_scale``; when > 0 it replaces W as the factor of the scaled loss.

    Returns:
        ``(loss, logits_local_rows)``. ``loss`` is what to back-propagate (with ``scaled=True`` it is
        factor × global mean CE, so divide by the factor to log the mean CE). ``logits_local_rows`` is
        the ``[B, N*n (+3N)]`` slice of this rank's rows of the global matrix, **without** the hard
        negative mask (so :func:`own_group_logits` on it gives the KD student logits). Their targets
        are ``contrastive_targets(B, n, rank() * B)``; pass ``num_passages=N*n`` to
        :func:`inbatch_metrics` to restrict the metrics to the q·p block.
    """
    b = q_local.shape[0]
    if p_local.shape[0] != b * n:
        raise ValueError(f"expected {b} * {n} local passages, got {p_local.shape[0]}")
    if scaled and mask_own_hard_negatives:
        raise ValueError("mask_own_hard_negatives requires scaled=False (SimLM asserts kd_mask_hn=False)")
    q_all = gather_with_grad(q_local)
    p_all = gather_with_grad(p_local)
    logits = contrastive_logits(q_all, p_all, n, temperature, full=full)
    start = rank() * b
    local_rows = logits[start : start + b]
    if scaled:
        factor = float(scale) if scale is not None and scale > 0 else float(world_size())
        targets = contrastive_targets(q_all.shape[0], n, device=logits.device)
        loss = F.cross_entropy(logits, targets) * factor
    else:
        rows = mask_hard_negatives(local_rows, n, start) if mask_own_hard_negatives else local_rows
        loss = F.cross_entropy(rows, contrastive_targets(b, n, start, logits.device))
    return loss, local_rows


@torch.no_grad()
def inbatch_metrics(
    logits_local_rows: Tensor, targets: Tensor, num_passages: int | None = None
) -> dict[str, float]:
    """In-batch ``acc@1``, ``acc@3`` and ``mrr`` (fractions in [0, 1]) of the target columns.

    ``num_passages`` (= N·n) restricts the columns to the q·p block, as SimLM logs them; None uses all
    columns (pass the q·p block directly). The rank of the target is 1 + the number of columns with a
    strictly greater score (ties are resolved in the target's favour).
    """
    scores = logits_local_rows if num_passages is None else logits_local_rows[:, :num_passages]
    scores = scores.detach()
    target_scores = scores.gather(1, targets.view(-1, 1).long())
    ranks = (scores > target_scores).sum(dim=1).to(torch.float64) + 1.0
    return {
        "acc@1": (ranks <= 1).double().mean().item(),
        "acc@3": (ranks <= 3).double().mean().item(),
        "mrr": (1.0 / ranks).mean().item(),
    }


def temperature_at(step: int, warmup_steps: int, t: float, t_warmup: bool) -> float:
    """Temperature at ``step``: τ, or with ``t_warmup`` 1 / max(1, (1/τ)·min(1, step / warmup_steps)).

    With warm-up the inverse temperature ramps linearly from 1 (floor) to 1/τ over ``warmup_steps``.
    ``warmup_steps <= 0`` means no ramp.
    """
    if not t_warmup or warmup_steps <= 0:
        return t
    inv = max(1.0, (1.0 / t) * min(1.0, step / warmup_steps))
    return 1.0 / inv


# ----------------------------------------------------------------------------------------- group losses


def kd_loss(student_group_logits: Tensor, teacher_scores: Tensor, teacher_temperature: float = 1.0) -> Tensor:
    """KL(teacher ‖ student) with batchmean (the original KD loss).

    ``student_group_logits [B, n]`` are already divided by τ; ``teacher_scores [B, n]`` are raw teacher
    logits, softened by ``teacher_temperature`` (1: SimLM; > 1 flattens a near one-hot teacher).
    Returns (1/B) Σ_i Σ_m p^T_im (log p^T_im − log p^S_im).
    """
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
    log_ps = F.log_softmax(student_group_logits, dim=-1)
    log_pt = F.log_softmax(teacher_scores.to(log_ps.dtype) / teacher_temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


def listwise_ce(group_logits: Tensor) -> Tensor:
    """Listwise softmax CE, positive at index 0: mean over rows of −log softmax(logits)[:, 0]."""
    return -F.log_softmax(group_logits, dim=-1)[:, 0].mean()


def rdrop_loss(logits_a: Tensor, logits_b: Tensor, weight: float = 1.0) -> Tensor:
    """Re-ranker loss with R-Drop (Liang et al., 2021; the original re-ranker trainer) on two dropout passes ``[B, n]`` of the same groups.

    0.5·(CE_a + CE_b) + weight·0.5·(KL(p_b‖p_a) + KL(p_a‖p_b)), both KLs with batchmean over the group
    distributions and CE the listwise CE with the positive at index 0.
    """
    lp_a = F.log_softmax(logits_a, dim=-1)
    lp_b = F.log_softmax(logits_b, dim=-1)
    ce = 0.5 * (listwise_ce(lp_a) + listwise_ce(lp_b))
    kl = F.kl_div(lp_a, lp_b, reduction="batchmean", log_target=True) + F.kl_div(
        lp_b, lp_a, reduction="batchmean", log_target=True
    )
    return ce + weight * 0.5 * kl


@torch.no_grad()
def select_hard_passages(scores: Tensor, keep: int) -> Tensor:
    """Re-ranker forward-factor selection (the original `src/models/cross_encoder_model.py`): indices ``[B, keep]`` of the passages to train on.

    The positive (index 0) is forced to +inf, then the ``keep`` highest scores of each row are taken in
    descending order, so column 0 of the result is always 0, followed by the hardest negatives.
    ``scores`` is not modified.
    """
    if not 1 <= keep <= scores.shape[1]:
        raise ValueError(f"keep must be in [1, {scores.shape[1]}], got {keep}")
    s = scores.detach().clone()
    s[:, 0] = float("inf")
    return torch.topk(s, keep, dim=1, largest=True, sorted=True).indices


def token_ce(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token CE of ``logits [B, L, V]`` against ``labels [B, L]`` over positions != ``ignore_index``.

    Returns a differentiable 0 (instead of NaN) when every position is ignored.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != ignore_index).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)
