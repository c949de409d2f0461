"""Losses against hand-computed values (SSBVER Eqs. 1-4, 7; VehicleNet Eq. 3)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vreid.errors import VreidError
from vreid.losses import CrossEntropyLabelSmooth, DINOLoss, TripletLoss, dino_teacher_temperatures

LN2 = math.log(2.0)


# -- cross-entropy ------------------------------------------------------------------------------------
def test_label_smoothing_hand_values():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]
    logits = torch.tensor([[0.0, 0.0, LN2], [0.0, 0.0, LN2]])
    targets = torch.tensor([2, 0])
    # eps = 0: -ln p_y
    plain = CrossEntropyLabelSmooth(3, epsilon=0.0)(logits, targets)
    assert plain.item() == pytest.approx((LN2 + 2 * LN2) / 2, abs=1e-6)
    # eps = 0.3, k = 3: q_y = 0.7 + 0.1 = 0.8 (= 1 - (k-1) eps / k), q_other = 0.1
    #   sample 0 (y=2): -(0.1 ln 1/4 + 0.1 ln 1/4 + 0.8 ln 1/2) = 1.2 ln 2
    #   sample 1 (y=0): -(0.8 ln 1/4 + 0.1 ln 1/4 + 0.1 ln 1/2) = 1.9 ln 2
    smooth = CrossEntropyLabelSmooth(3, epsilon=0.3)(logits, targets)
    assert smooth.item() == pytest.approx(1.55 * LN2, abs=1e-6)


def test_label_smoothing_matches_torch_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    targets = torch.tensor([0, 1, 4, 2, 2, 3])
    ours = CrossEntropyLabelSmooth(5, epsilon=0.2)(logits, targets)
    ref = F.cross_entropy(logits, targets, label_smoothing=0.2)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)


def test_label_smoothing_rejects_bad_labels():
    with pytest.raises(VreidError, match="labels must be in"):
        CrossEntropyLabelSmooth(3)(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(VreidError, match="shape"):
        CrossEntropyLabelSmooth(4)(torch.zeros(2, 3), torch.tensor([0, 1]))


# -- triplet ------------------------------------------------------------------------------------------
# Points (0,0) (3,0) (0,4) (3,4) (6,0) with labels 0 0 1 1 0. Per anchor (hardest pos, hardest neg):
#   a0: pos {3, 6} -> 6, neg {4, 5} -> 4      d_ap - d_an =  2
#   a1: pos {3, 3} -> 3, neg {5, 4} -> 4                     -1
#   a2: pos {3}    -> 3, neg {4, 5, sqrt52} -> 4              -1
#   a3: pos {3}    -> 3, neg {5, 4, 5} -> 4                  -1
#   a4: pos {6, 3} -> 6, neg {sqrt52, 5} -> 5                  1
FEATS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0], [6.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1, 0])


def test_soft_margin_triplet_hand_values():
    loss, d_ap, d_an = TripletLoss()(FEATS, LABELS, return_distances=True)
    assert d_ap.tolist() == pytest.approx([6, 3, 3, 3, 6], abs=1e-5)
    assert d_an.tolist() == pytest.approx([4, 4, 4, 4, 5], abs=1e-5)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (sp(2) + 3 * sp(-1) + sp(1)) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_margin_triplet_hand_values():
    loss = TripletLoss(margin=0.5)(FEATS, LABELS)
    # relu([2.5, -0.5, -0.5, -0.5, 1.5]) averaged over 5 anchors
    assert loss.item() == pytest.approx(0.8, abs=1e-5)


def test_triplet_brute_force_and_skips_anchors_without_positive():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])  # anchor 8 (id 3) has no positive: skipped
    loss = TripletLoss()(x, y)
    xs = x.detach().numpy()
    terms = []
    for a in range(9):
        pos = [np.linalg.norm(xs[a] - xs[p]) for p in range(9) if p != a and y[p] == y[a]]
        neg = [np.linalg.norm(xs[a] - xs[n]) for n in range(9) if y[n] != y[a]]
        if pos and neg:
            terms.append(math.log1p(math.exp(max(pos) - min(neg))))
    assert len(terms) == 8
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_single_identity_is_zero_with_grad():
    x = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss()(x, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


# -- DINO ---------------------------------------------------------------------------------------------
def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_dino_loss_hand_values_and_centre():
    # E = 2, one image (B=1), 2 global + 1 local view; teacher temp 1, student temp 0.5.
    loss_fn = DINOLoss(2, n_global=2, n_local=1, teacher_temp_schedule=[1.0, 1.0], student_temp=0.5)
    half_ln3 = 0.5 * math.log(3.0)
    student = [torch.tensor([[0.0, 0.0]]),          # p_s = [1/2, 1/2]
               torch.tensor([[half_ln3, 0.0]]),     # p_s = softmax([ln 3, 0]) = [3/4, 1/4]
               torch.tensor([[0.0, half_ln3]])]     # p_s = [1/4, 3/4]
    teacher = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]  # p_t = [s(1), s(-1)], [s(-1), s(1)]
    s1, sm1 = _sig(1), _sig(-1)
    l34, l14 = math.log(0.75), math.log(0.25)
    pairs = [
        -(s1 * l34 + sm1 * l14),   # teacher view 1 vs student view 2
        -(s1 * l14 + sm1 * l34),   # teacher view 1 vs student local
        LN2,                       # teacher view 2 vs student view 1
        -(sm1 * l14 + s1 * l34),   # teacher view 2 vs student local
    ]
    loss = loss_fn(student, teacher, epoch=0)
    assert loss.item() == pytest.approx(sum(pairs) / 4, abs=1e-6)
    # centre: 0.9 * 0 + 0.1 * mean([1, 0], [0, 1]) = [0.05, 0.05]
    assert loss_fn.center[0].tolist() == pytest.approx([0.05, 0.05], abs=1e-7)

    # The centre is subtracted from the teacher: teacher [2, 0] twice -> centre [0.2, 0] after one step,
    # then p_t = softmax([1.8, 0]) in the next call.
    loss_fn2 = DINOLoss(2, n_global=2, n_local=0, teacher_temp_schedule=[1.0, 1.0], student_temp=1.0)
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # concatenated form: [2B, E] with B = 1
    loss_fn2(s, t, epoch=0)
    assert loss_fn2.center[0].tolist() == pytest.approx([0.2, 0.0], abs=1e-7)
    loss2 = loss_fn2(s, t, epoch=1)  # uniform student: -sum p_t log(1/2) = ln 2 whatever p_t
    s_asym = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # p_s = [3/4, 1/4]
    loss3 = loss_fn2(s_asym, t, epoch=1)
    c0 = 0.9 * 0.2 + 0.1 * 2.0  # centre used in the third call (after two updates): 0.38
    q = _sig(2.0 - c0)  # p_t = softmax([2 - c0, 0])
    assert loss2.item() == pytest.approx(LN2, abs=1e-6)
    assert loss3.item() == pytest.approx(-(q * l34 + (1 - q) * l14), abs=1e-6)


def test_dino_loss_list_equals_concatenated_and_numpy_reference():
    g = torch.Generator().manual_seed(3)
    B, E, L = 3, 8, 2
    student = [torch.randn(B, E, generator=g) for _ in range(2 + L)]
    teacher = [torch.randn(B, E, generator=g) for _ in range(2)]
    a = DINOLoss(E, n_global=2, n_local=L, teacher_temp_schedule=[0.04], student_temp=0.1)
    b = DINOLoss(E, n_global=2, n_local=L, teacher_temp_schedule=[0.04], student_temp=0.1)
    la = a(student, teacher, 0)
    lb = b(torch.cat(student), torch.cat(teacher), 0)
    assert la.item() == pytest.approx(lb.item(), abs=1e-6)

    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    terms = []
    for i, t in enumerate(teacher):
        pt = softmax(t.numpy() / 0.04)
        for v, s in enumerate(student):
            if v != i:
                terms.append(np.mean(-(pt * np.log(softmax(s.numpy() / 0.1))).sum(axis=1)))
    assert la.item() == pytest.approx(float(np.mean(terms)), rel=1e-5)
    assert a.center.numpy() == pytest.approx(0.1 * torch.cat(teacher).mean(0, keepdim=True).numpy(), abs=1e-6)


def test_dino_loss_gradient_only_to_student():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(4, 4, requires_grad=True)
    DINOLoss(4, n_global=2, n_local=1, teacher_temp_schedule=[0.05])(s, t, 0).backward()
    assert s.grad is not None and t.grad is None


def test_dino_rmse_ablation_hand_values():
    loss_fn = DINOLoss(2, n_global=2, n_local=1, mode="rmse", teacher_temp_schedule=[1.0])
    teacher = [torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])]
    student = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 0.0]])]
    # pairs: (t1, s2) 0, (t1, s3) 3, (t2, s1) 5, (t2, s3) ||(0, -4)|| = 4
    assert loss_fn(student, teacher, 0).item() == pytest.approx(3.0, abs=1e-6)


def test_teacher_temperature_schedule_ssbver_defaults():
    loss_fn = DINOLoss(16, n_global=2, n_local=4)  # SSBVER 4.3: 0.0005 -> 0.001 over 10 of 120 epochs
    sched = loss_fn.teacher_temp_schedule
    assert len(sched) == 120
    assert sched[0] == pytest.approx(0.0005)
    assert sched[9] == pytest.approx(0.001)
    assert sched[3] == pytest.approx(0.0005 + 3 * 0.0005 / 9)
    assert sched[50] == pytest.approx(0.001)
    assert loss_fn.student_temp == 0.1 and loss_fn.center_momentum == 0.9
    assert dino_teacher_temperatures(0.04, 0.07, 3, 5).tolist() == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07])
    with pytest.raises(VreidError, match="epoch 120"):
        loss_fn.teacher_temp(120)


def test_dino_loss_rejects_wrong_view_counts():
    loss_fn = DINOLoss(4, n_global=2, n_local=2, teacher_temp_schedule=[0.1])
    with pytest.raises(VreidError, match="expected 4 student views"):
        loss_fn([torch.zeros(2, 4)] * 3, [torch.zeros(2, 4)] * 2, 0)
    with pytest.raises(VreidError, match="mode"):
        DINOLoss(4, mode="l1")
