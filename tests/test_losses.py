"""Loss functions against brute-force references written with explicit Python loops (float64, 1e-10)."""

from __future__ import annotations

import math

import pytest
import torch

from simlm.losses import (
    contrastive_logits,
    contrastive_loss,
    contrastive_targets,
    inbatch_metrics,
    kd_loss,
    listwise_ce,
    mask_hard_negatives,
    own_group_logits,
    rdrop_loss,
    select_hard_passages,
    temperature_at,
    token_ce,
)

TOL = 1e-10
NEG_INF = float("-inf")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------- brute force


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist()))


def bf_row(q: torch.Tensor, p: torch.Tensor, n: int, t: float, i: int, full: bool) -> list[float]:
    """Row i of the score matrix as a Python list; excluded columns are -inf."""
    num_q = q.shape[0]
    row = [dot(q[i], p[j]) / t for j in range(p.shape[0])]
    if full:
        pos_i = p[i * n]
        row += [NEG_INF if k == i else dot(pos_i, q[k]) / t for k in range(num_q)]
        row += [NEG_INF if k == i else dot(q[i], q[k]) / t for k in range(num_q)]
        row += [NEG_INF if k == i else dot(pos_i, p[k * n]) / t for k in range(num_q)]
    return row


def bf_ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], the denominator summed over the allowed (finite) columns."""
    m = max(v for v in row if v != NEG_INF)
    denom = 0.0
    for v in row:
        if v != NEG_INF:
            denom += math.exp(v - m)
    return -(row[target] - m - math.log(denom))


def bf_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def bf_kl(log_p: list[float], log_q: list[float]) -> float:
    """KL(p || q) for one row."""
    return sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))


# ------------------------------------------------------------------------------------ contrastive


@pytest.mark.parametrize("full", [True, False])
def test_contrastive_logits_match_bruteforce(full):
    num_q, n, d, t = 5, 3, 4, 0.7
    q, p = rand(num_q, d, seed=1), rand(num_q * n, d, seed=2)
    logits = contrastive_logits(q, p, n, t, full=full)
    width = num_q * n + (3 * num_q if full else 0)
    assert logits.shape == (num_q, width)
    for i in range(num_q):
        expected = bf_row(q, p, n, t, i, full)
        for j in range(width):
            got = float(logits[i, j])
            if expected[j] == NEG_INF:
                assert got == NEG_INF, (i, j)
            else:
                assert math.isfinite(got) and abs(got - expected[j]) < TOL, (i, j)


def test_contrastive_logits_minus_inf_exactly_on_block_diagonals():
    num_q, n = 4, 2
    logits = contrastive_logits(rand(num_q, 3, seed=3), rand(num_q * n, 3, seed=4), n, 0.5)
    is_inf = torch.isneginf(logits)
    expected = torch.zeros_like(is_inf)
    for i in range(num_q):
        for block in range(3):
            expected[i, num_q * n + block * num_q + i] = True
    assert torch.equal(is_inf, expected)
    assert is_inf.sum() == 3 * num_q


def test_contrastive_logits_rejects_bad_shapes():
    with pytest.raises(ValueError):
        contrastive_logits(rand(3, 4), rand(7, 4), 2, 0.1)
    with pytest.raises(ValueError):
        contrastive_logits(rand(3, 4), rand(6, 4), 2, 0.0)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
def test_contrastive_loss_single_process_matches_bruteforce(full, scaled):
    num_q, n, d, t = 4, 3, 5, 0.5
    q, p = rand(num_q, d, seed=5), rand(num_q * n, d, seed=6)
    loss, rows = contrastive_loss(q, p, n, t, full=full, scaled=scaled)
    expected = sum(bf_ce(bf_row(q, p, n, t, i, full), i * n) for i in range(num_q)) / num_q
    assert abs(loss.item() - expected) < TOL
    assert torch.equal(rows, contrastive_logits(q, p, n, t, full=full))


def test_full_false_is_qp_only_ce_and_differs_from_full():
    num_q, n, d, t = 4, 2, 3, 0.4
    q, p = rand(num_q, d, seed=7), rand(num_q * n, d, seed=8)
    loss_qp, _ = contrastive_loss(q, p, n, t, full=False)
    qp = (q @ p.T) / t
    expected = torch.nn.functional.cross_entropy(qp, torch.arange(num_q) * n)
    assert abs(loss_qp.item() - expected.item()) < TOL
    loss_full, _ = contrastive_loss(q, p, n, t, full=True)
    assert loss_full.item() > loss_qp.item() + 1e-6  # extra negatives only enlarge the denominator


def test_scale_override_multiplies_scaled_loss():
    q, p = rand(3, 4, seed=9), rand(6, 4, seed=10)
    base, _ = contrastive_loss(q, p, 2, 0.3)
    scaled3, _ = contrastive_loss(q, p, 2, 0.3, scale=3.0)
    ignored, _ = contrastive_loss(q, p, 2, 0.3, scale=-1)
    assert abs(scaled3.item() - 3 * base.item()) < TOL
    assert abs(ignored.item() - base.item()) < TOL


def test_contrastive_loss_gradient_matches_finite_differences():
    q = rand(3, 4, seed=11).requires_grad_()
    p = rand(9, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, 3, 0.5)[0], (q, p))
    loss, _ = contrastive_loss(q, p, 3, 0.5)
    loss.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()


def test_mask_hard_negatives_sets_exactly_the_own_group_negatives():
    rows, n, num_q = 3, 4, 5
    logits = rand(rows, num_q * n + 3 * num_q, seed=13)
    offset = 2  # rows are global rows 2, 3, 4
    masked = mask_hard_negatives(logits, n, row_offset=offset)
    for i in range(rows):
        g = i + offset
        for j in range(logits.shape[1]):
            if g * n + 1 <= j <= g * n + n - 1:
                assert masked[i, j] == NEG_INF, (i, j)
            else:
                assert masked[i, j] == logits[i, j], (i, j)
    assert not torch.isinf(logits).any()  # out of place


def test_contrastive_loss_masked_matches_bruteforce():
    num_q, n, d, t = 4, 3, 5, 0.5
    q, p = rand(num_q, d, seed=14), rand(num_q * n, d, seed=15)
    loss, rows = contrastive_loss(q, p, n, t, scaled=False, mask_own_hard_negatives=True)
    total = 0.0
    for i in range(num_q):
        row = bf_row(q, p, n, t, i, True)
        for j in range(i * n + 1, i * n + n):
            row[j] = NEG_INF
        total += bf_ce(row, i * n)
    assert abs(loss.item() - total / num_q) < TOL
    assert not torch.isinf(rows[:, : num_q * n]).any()  # returned rows are unmasked
    unmasked, _ = contrastive_loss(q, p, n, t, scaled=False)
    assert loss.item() < unmasked.item() - 1e-6
    with pytest.raises(ValueError):
        contrastive_loss(q, p, n, t, scaled=True, mask_own_hard_negatives=True)


def test_targets_and_own_group_logits():
    assert contrastive_targets(3, 4, row_offset=2).tolist() == [8, 12, 16]
    logits = torch.arange(2 * 20, dtype=torch.float64).view(2, 20)
    group = own_group_logits(logits, n=3, row_offset=1)
    assert group.tolist() == [[3.0, 4.0, 5.0], [26.0, 27.0, 28.0]]


# ---------------------------------------------------------------------------------------- metrics


def test_inbatch_metrics_hand_made():
    scores = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0, 9.0],  # target 0 -> rank 1
            [3.0, 1.0, 2.0, 0.0, 9.0],  # target 1 -> rank 3 (3.0, 2.0 above)
            [1.5, 4.0, 3.0, 1.0, 9.0],  # target 3 -> rank 4 (1.5, 4.0, 3.0 above)
            [0.0, 0.0, 1.0, 2.0, 9.0],  # target 2 -> rank 2
        ]
    )
    targets = torch.tensor([0, 1, 3, 2])
    m = inbatch_metrics(scores, targets, num_passages=4)  # column 4 (9.0) is outside the q-p block
    assert m["acc@1"] == pytest.approx(1 / 4)
    assert m["acc@3"] == pytest.approx(3 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4 + 1 / 2) / 4)
    every_col = inbatch_metrics(scores, targets)  # 9.0 now outranks every target
    assert every_col["acc@1"] == 0.0
    assert every_col["mrr"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 5 + 1 / 3) / 4)


def test_temperature_at_ramp():
    t = 0.02  # 1/t = 50
    assert temperature_at(0, 1000, t, t_warmup=False) == t
    assert temperature_at(0, 1000, t, t_warmup=True) == 1.0  # floor 1
    assert temperature_at(10, 1000, t, t_warmup=True) == 1.0  # 50 * 0.01 = 0.5 -> 1
    assert temperature_at(500, 1000, t, t_warmup=True) == pytest.approx(1 / 25)
    assert temperature_at(1000, 1000, t, t_warmup=True) == pytest.approx(t)
    assert temperature_at(5000, 1000, t, t_warmup=True) == pytest.approx(t)


# ------------------------------------------------------------------------------------- group losses


def test_kd_loss_matches_kl_formula():
    b, n = 4, 6
    s, te = rand(b, n, seed=16) * 3, rand(b, n, seed=17) * 2
    expected = 0.0
    for i in range(b):
        log_ps, log_pt = bf_log_softmax(s[i].tolist()), bf_log_softmax(te[i].tolist())
        expected += bf_kl(log_pt, log_ps)  # KL(teacher || student)
    expected /= b
    assert abs(kd_loss(s, te).item() - expected) < TOL
    reverse = sum(bf_kl(bf_log_softmax(s[i].tolist()), bf_log_softmax(te[i].tolist())) for i in range(b)) / b
    assert abs(expected - reverse) > 1e-3  # the direction matters and is the right one


@pytest.mark.parametrize("t", [0.5, 2.0, 10.0])
def test_kd_teacher_temperature_softens_the_teacher(t):
    b, n = 4, 6
    s, te = rand(b, n, seed=20) * 3, rand(b, n, seed=21) * 8
    expected = (
        sum(
            bf_kl(bf_log_softmax([x / t for x in te[i].tolist()]), bf_log_softmax(s[i].tolist()))
            for i in range(b)
        )
        / b
    )
    assert abs(kd_loss(s, te, teacher_temperature=t).item() - expected) < TOL
    assert abs(kd_loss(s, te, teacher_temperature=t).item() - kd_loss(s, te).item()) > 1e-3
    with pytest.raises(ValueError, match="teacher_temperature"):
        kd_loss(s, te, teacher_temperature=0.0)


def test_kd_loss_zero_for_equal_distributions_and_sgd_moves_to_teacher():
    te = rand(3, 5, seed=18)
    shift = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    assert abs(kd_loss(te + shift, te).item()) < TOL  # same softmax
    student = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = kd_loss(student, te)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    gap0 = (torch.softmax(torch.zeros(3, 5, dtype=torch.float64), -1) - torch.softmax(te, -1)).abs().sum()
    gap1 = (torch.softmax(student.detach(), -1) - torch.softmax(te, -1)).abs().sum()
    assert gap1 < 0.5 * gap0


def test_listwise_ce_matches_bruteforce():
    x = rand(5, 7, seed=19) * 4
    expected = sum(bf_ce(x[i].tolist(), 0) for i in range(5)) / 5
    assert abs(listwise_ce(x).item() - expected) < TOL


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_rdrop_matches_bruteforce(weight):
    b, n = 4, 5
    a, c = rand(b, n, seed=20) * 2, rand(b, n, seed=21) * 2
    ce = 0.0
    kl = 0.0
    for i in range(b):
        la, lc = bf_log_softmax(a[i].tolist()), bf_log_softmax(c[i].tolist())
        ce += 0.5 * (-la[0] - lc[0])
        kl += 0.5 * (bf_kl(lc, la) + bf_kl(la, lc))
    expected = ce / b + weight * kl / b
    assert abs(rdrop_loss(a, c, weight=weight).item() - expected) < TOL


def test_rdrop_kl_term_vanishes_when_passes_agree():
    a = rand(3, 4, seed=22)
    assert abs(rdrop_loss(a, a.clone()).item() - listwise_ce(a).item()) < TOL
    assert rdrop_loss(a, rand(3, 4, seed=23)).item() > 0.5 * (
        listwise_ce(a).item() + listwise_ce(rand(3, 4, seed=23)).item()
    )


def test_select_hard_passages_hand_example():
    scores = torch.tensor(
        [
            [-5.0, 0.1, 3.0, 2.0, -1.0, 2.5],  # positive scored lowest, still kept first
            [9.0, 1.0, 0.0, 7.0, 8.0, -3.0],
        ]
    )
    before = scores.clone()
    idx = select_hard_passages(scores, keep=3)
    assert idx.dtype == torch.long
    assert idx.tolist() == [[0, 2, 5], [0, 4, 3]]
    assert torch.equal(scores, before)
    assert select_hard_passages(scores, keep=1).tolist() == [[0], [0]]
    with pytest.raises(ValueError):
        select_hard_passages(scores, keep=7)


def test_token_ce_matches_bruteforce():
    b, seq, v = 2, 5, 6
    logits = rand(b, seq, v, seed=24) * 2
    labels = torch.tensor([[1, -100, 3, 0, -100], [-100, 5, 2, -100, 4]])
    total, count = 0.0, 0
    for i in range(b):
        for j in range(seq):
            if labels[i, j] != -100:
                total += bf_ce(logits[i, j].tolist(), int(labels[i, j]))
                count += 1
    assert count == 6
    assert abs(token_ce(logits, labels).item() - total / count) < TOL
    none = token_ce(logits.requires_grad_(), torch.full((b, seq), -100))
    assert none.item() == 0.0
    none.backward()
