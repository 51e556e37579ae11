"""The Muon recipe's parts: Newton-Schulz orthogonalisation, the Muon/SGD optimizer, its groups, the schedule."""

import pytest
import torch
from conftest import FAST, compose_train, train_run

from cifar_lightning.blocks.models.airbench import AirbenchNet
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.blocks.optim import NEWTON_SCHULZ, Muon, muon_sgd, orthogonalize
from cifar_lightning.blocks.schedules import linear_to_zero


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (32, 32)])
def test_orthogonalize_evens_out_the_singular_values(shape):
    g = torch.Generator().manual_seed(0)
    rank = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], rank, generator=g))
    matrix = u @ torch.diag(torch.logspace(-2, 0, rank)) @ v.T  # singular values from 0.01 to 1
    after = torch.linalg.svdvals(orthogonalize(matrix, steps=5))
    # quintic coefficients: every direction brought near size 1 (not exactly 1), a 100x spread down to a few x
    assert after.max() < 1.3 and after.max() / after.min() < 10


def test_orthogonalize_keeps_an_orthogonal_matrix_s_directions():
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    out = orthogonalize(q, steps=3)
    assert torch.allclose(out / out.norm(), q / q.norm(), atol=1e-5)


def test_muon_step_renormalises_the_filters_then_takes_an_orthogonal_step():
    weight = torch.nn.Parameter(5 * torch.randn(8, 4, 3, 3))
    grad = torch.randn(8, 4, 3, 3)
    weight.grad = grad.clone()
    optimizer = Muon([weight], lr=0.1, momentum=0.6, nesterov=True, ns_steps=3)
    normalised = weight.detach() * 8**0.5 / weight.detach().norm()
    optimizer.step()
    update = orthogonalize(((1 + 0.6) * grad).reshape(8, -1), 3).view(8, 4, 3, 3)  # first step: buffer = grad
    assert torch.allclose(weight.detach(), normalised - 0.1 * update, atol=1e-6)
    # a second step starts again from norm sqrt(8)
    weight.grad = grad.clone()
    optimizer.step()
    assert weight.detach().norm() != pytest.approx(8**0.5)  # moved off it by the step, renormalised before the next


def test_orthogonalize_of_a_batch_is_each_matrix_orthogonalized_alone():
    g = torch.Generator().manual_seed(2)
    for shape in [(3, 16, 40), (2, 40, 16)]:
        batch = torch.randn(shape, generator=g)
        alone = torch.stack([orthogonalize(m) for m in batch])
        assert torch.allclose(orthogonalize(batch), alone, atol=1e-5)


def by_hand(shapes, steps, renormalised_at, lr=0.1, decay=0.0, coefficients=NEWTON_SCHULZ, **muon):
    """Muon's filters after `steps` steps with known gradients, computed one bank at a time, renormalised exactly at
    the steps `renormalised_at` (a set); returns (Muon's parameters, the hand-computed ones)."""
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(3 * torch.randn(s, generator=g)) for s in shapes]
    expected = [p.detach().clone() for p in params]
    buffers = [torch.zeros(s) for s in shapes]
    optimizer = Muon(params, lr=lr, momentum=0.6, nesterov=True, ns_steps=3, ns_coefficients=coefficients, **muon)
    for step in range(1, steps + 1):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        optimizer.step()
        for i, (w, grad) in enumerate(zip(expected, grads)):
            buffers[i] = 0.6 * buffers[i] + grad
            if step in renormalised_at:
                w = w * len(w) ** 0.5 / w.norm()
            update = orthogonalize((grad + 0.6 * buffers[i]).reshape(len(w), -1), 3, coefficients=coefficients)
            expected[i] = (w - lr * update.view_as(w)) * (1 - lr * decay)
    return optimizer, params, expected


def test_muon_renormalises_every_norm_every_steps_and_orthogonalizes_each_filter_bank():
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (6, 8, 3, 3)]  # two banks batched together, one alone
    optimizer, params, expected = by_hand(shapes, 7, renormalised_at={1, 4, 7}, norm_every=3)
    for p, w in zip(params, expected):
        assert torch.allclose(p.detach(), w, atol=1e-5)
    assert optimizer.state_dict()["state"][0]["step"] == 7  # kept in checkpoints: a resumed run keeps the rhythm


def test_muon_s_growing_interval_filter_decay_and_coefficients_match_a_hand_computation():
    # the interval grows from 2 to 4 over 8 steps: 2 + int(2 x step / 8) = 2, 2, 2, 3, 3, 3, 3, 4 at steps 1-8;
    # renormalised once 2 steps have passed since the start (2), then 3 steps later (5), then not at 8 (3 < 4)
    hiverge = (3.4576, -4.7391, 2.0843)
    optimizer, params, expected = by_hand(
        [(8, 4, 3, 3)],
        8,
        renormalised_at={2, 5},
        decay=0.05,
        coefficients=hiverge,
        norm_every=2,
        norm_every_end=4,
        total_steps=8,
        weight_decay=0.05,
    )
    assert torch.allclose(params[0].detach(), expected[0], atol=1e-5)
    # the coefficients change the result (else this test could not tell them apart)
    assert not torch.allclose(
        orthogonalize(expected[0].reshape(8, -1), coefficients=hiverge), orthogonalize(expected[0].reshape(8, -1))
    )
    with pytest.raises(ValueError, match="needs the run's total_steps"):
        Muon(params, lr=0.1, momentum=0.6, norm_every_end=5)


def test_orthogonalize_takes_one_newton_schulz_iteration_with_the_given_coefficients():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    a, b, c = 2.0, -1.5, 0.5
    y = x / x.norm()
    gram = y @ y.T
    assert torch.allclose(
        orthogonalize(x, steps=1, coefficients=(a, b, c)), a * y + (b * gram + c * gram @ gram) @ y, atol=1e-6
    )


def test_muon_sgd_groups_step_like_torch_sgd():
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Muon([dict(params=[a], lr=0.05, momentum=0.85, weight_decay=0.1, muon=False)], lr=1.0, momentum=0.0)
    torch_sgd = torch.optim.SGD([b], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.1)
    for step in range(4):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        torch_sgd.step()
        assert torch.allclose(a, b, atol=1e-7)


def test_muon_sgd_puts_each_parameter_in_its_group():
    net = AirbenchNet(widths=(8, 16, 16))
    optimizer = muon_sgd(
        net.named_parameters(),
        lr=0.24,
        momentum=0.6,
        bias_lr=0.053,
        head_lr=0.67,
        sgd_momentum=0.85,
        weight_decay=2e-6,
        batch_size=2000,
        whiten_bias_decay=0.375,
    )
    filters, whiten_bias, biases, head = optimizer.param_groups
    assert filters["muon"] and len(filters["params"]) == 6 and all(p.ndim == 4 for p in filters["params"])
    assert all(p is not net.whiten.weight for p in filters["params"])  # frozen: set from the data
    assert whiten_bias["params"][0] is net.whiten.bias and whiten_bias["decay_share"] == 0.375
    assert len(biases["params"]) == 6 and head["params"][0] is net.head.weight and len(head["params"]) == 1
    for group, lr in ((whiten_bias, 0.053), (biases, 0.053), (head, 0.67)):
        assert not group["muon"] and group["lr"] == lr and group["momentum"] == 0.85
        assert group["lr"] * group["weight_decay"] == pytest.approx(2e-6 * 2000)  # the same decay per step
    assert filters["momentum"] == 0.6 and filters["weight_decay"] == 0.0
    decayed = muon_sgd(
        net.named_parameters(), 0.24, 0.6, 0.053, 0.67, 0.85, weight_decay=2e-6, batch_size=2000, decay_filters=True
    )
    assert decayed.param_groups[0]["weight_decay"] == pytest.approx(2e-6 * 2000)  # x Muon's lr per step


def test_linear_to_zero_ends_each_group_at_its_own_share():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([dict(params=params[:1], lr=1.0), dict(params=params[1:], lr=2.0, decay_share=0.25)])
    schedule = linear_to_zero(optimizer, total_steps=40)
    for step in range(45):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(max(0, 1 - step / 40))
        assert optimizer.param_groups[1]["lr"] == pytest.approx(2 * max(0, 1 - step / 10))
        optimizer.step()
        schedule.step()


def test_fast94_trains_on_tiny_data_with_muon(tmp_path):
    overrides = [
        "experiment=fast94",
        "data=synthetic",
        *FAST,
        "epochs=2",
        "batch_size=200",
        "model.widths=[16,32,32]",
    ]
    summary = train_run(overrides, tmp_path / "run")
    assert summary["epochs"] == 2 and summary["best_val_acc"] > 0.5  # 10 classes: well above chance
    assert summary["training_pflop"] > 0


def test_the_module_gives_the_optimizer_the_run_s_steps_where_its_total_steps_is_null():
    hiverge = ["optimizer.norm_every=2", "optimizer.norm_every_end=17", "optimizer.decay_filters=true"]
    cfg = compose_train(["experiment=fast94_hiverge", *hiverge, "optimizer.ns_coefficients=[3.4576,-4.7391,2.0843]"])
    net = {"_target_": "cifar_lightning.blocks.models.airbench.AirbenchNet", "widths": [8, 16, 16]}
    module = ImageClassifier(net=net, optimizer=plain(cfg.optimizer), class_names=[str(i) for i in range(10)])
    built, _, _ = module.optimizer_and_schedule(total_steps=37)
    filters = built.param_groups[0]
    assert filters["total_steps"] == 37 and filters["norm_every"] == 2 and filters["norm_every_end"] == 17
    assert filters["ns_coefficients"] == (3.4576, -4.7391, 2.0843)
    assert filters["weight_decay"] == pytest.approx(1.0418e-6 * 1536)  # hiverge's per-example decay x its batch
    assert module.hparams["optimizer"]["total_steps"] is None  # the recorded config keeps "the whole run"


@pytest.mark.parametrize(
    "options",
    [dict(norm_every=3), dict(norm_every=2, norm_every_end=6, total_steps=9, weight_decay=0.05)],
    ids=["fixed", "growing"],
)
def test_a_muon_optimizer_restored_from_its_state_dict_goes_on_as_if_never_stopped(options):
    def run(steps, state=None):
        g = torch.Generator().manual_seed(7)
        weight = torch.nn.Parameter(3 * torch.randn(8, 4, 3, 3, generator=g))
        grads = [torch.randn(8, 4, 3, 3, generator=g) for _ in range(9)]
        optimizer = Muon([weight], lr=0.1, momentum=0.6, **options)
        if state is not None:
            weight.data.copy_(state[0])
            optimizer.load_state_dict(state[1])
        for grad in grads[9 - steps :] if state is not None else grads[:steps]:
            weight.grad = grad.clone()
            optimizer.step()
        return weight.detach().clone(), optimizer.state_dict()

    uninterrupted, _ = run(9)
    resumed, _ = run(4, state=run(5))
    assert torch.equal(resumed, uninterrupted)
