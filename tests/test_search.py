"""The search: second-order gradient against finite differences, what each half-step updates,
run folders, resume, bad checkpoints, NaN losses, configs and presets."""

from __future__ import annotations

import json
import math
import shutil
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from diffnas.config import PRESETS, SearchConfig, coerce_options, resolve_config
from diffnas.engine.runfolder import RunFolder
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.methods.darts import DARTS
from diffnas.objectives import Batch
from diffnas.spaces import parse_genotype


def tiny_problem(dtype: torch.dtype = torch.float64, **overrides: Any):
    """An NB201 supernet (2 channels, 1 cell per stage) on random 4×4 images, 3 classes."""
    kw = dict(space="nb201", channels=2, layers=1, batch_size=6, dataset="digits", device="cpu")
    kw.update(overrides)
    cfg = resolve_config(None, **kw)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        net, objective, method = build_search(cfg, 1, 4, 3, 1, torch.device("cpu"))
    finally:
        torch.set_default_dtype(old)
    method.begin_epoch(0)
    g = torch.Generator().manual_seed(0)

    def batch() -> Batch:
        x = torch.randn(6, 1, 4, 4, generator=g, dtype=dtype)
        return objective.prepare(x, torch.randint(0, 3, (6,), generator=g))

    with torch.no_grad():
        for a in method.a_params:
            a.normal_(0.0, 0.5, generator=g)
    return cfg, net, method, batch(), batch()


# ------------------------------------------------------------------------ second order (Eq. 6-8)
@pytest.mark.parametrize("with_momentum", [False, True])
def test_second_order_alpha_gradient_matches_finite_differences(with_momentum):
    # ξ = 0.5 so the Hessian term dominates: a first-order gradient fails this test
    cfg, net, method, train, val = tiny_problem(w_lr=0.5, order=2)
    if with_momentum:  # one real weight step fills the SGD momentum buffers
        method.weight_step(train)
    xi = method.w_opt.param_groups[0]["lr"]
    mom, wd = cfg.w_momentum, cfg.w_weight_decay
    names = {id(p): n for n, p in net.named_parameters()}
    w_names = [names[id(p)] for p in method.w_params]
    w0 = {n: p.detach().clone() for n, p in zip(w_names, method.w_params, strict=True)}
    bufs = {n: method.w_opt.state.get(p, {}).get("momentum_buffer")
            for n, p in zip(w_names, method.w_params, strict=True)}
    assert all(b is not None for b in bufs.values()) == with_momentum

    def unrolled_val_loss(alpha: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """α ↦ L_val(w', α), w' = w − ξ (∇_w L_train(w, α) + λw + μ·buf): one SGD step
        (``exact``: keep the graph through ∇_w L_train, for an autograd reference)."""
        w = {n: t.clone().requires_grad_() for n, t in w0.items()}
        logits = functional_call(net, {**w, "alphas.cell": alpha}, (train.x,))
        grads = torch.autograd.grad(F.cross_entropy(logits, train.y), list(w.values()),
                                    allow_unused=True, create_graph=exact)
        w_new = {}
        for (n, t), gr in zip(w.items(), grads, strict=True):
            d = (torch.zeros_like(t) if gr is None else gr) + wd * t
            if bufs[n] is not None:
                d = d + mom * bufs[n]
            w_new[n] = t - xi * d
        logits = functional_call(net, {**w_new, "alphas.cell": alpha}, (val.x,))
        return F.cross_entropy(logits, val.y)

    # central differences along random directions u: (F(α + hu) − F(α − hu)) / 2h ≈ ⟨∇F, u⟩
    alpha0 = net.alphas["cell"].detach().clone()
    dirs = torch.randn(6, *alpha0.shape, generator=torch.Generator().manual_seed(1),
                       dtype=alpha0.dtype)
    h = 1e-7  # F is strongly curved in α on this tiny net: 1e-5 is already 0.3 % off
    numeric = torch.stack([(unrolled_val_loss(alpha0 + h * u) - unrolled_val_loss(alpha0 - h * u))
                           .detach() / (2 * h) for u in dirs])

    def along(grad: torch.Tensor) -> torch.Tensor:
        return (dirs * grad).sum(dim=(1, 2))

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    # an autograd reference through the virtual step, checked against the numbers
    alpha = alpha0.clone().requires_grad_()
    (exact,) = torch.autograd.grad(unrolled_val_loss(alpha, exact=True), alpha)
    assert rel(along(exact), numeric) < 1e-6

    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt_before = {n: (None if b is None else b.clone()) for n, b in bufs.items()}

    def unrolled(fd_radius: float) -> torch.Tensor:
        method.fd_radius = fd_radius
        out, grads = method.unrolled_arch_grads(val, train)
        assert math.isfinite(float(out.loss.detach())) and len(grads) == 1
        return grads[0]

    # DARTS' ε = 0.01/‖∇w′L‖ is far too coarse for a 2-channel net (relative error ~4 here);
    # at a small radius the implementation agrees with the finite differences ...
    small = unrolled(1e-5)
    assert rel(along(small), numeric) < 1e-6
    # ... and its Hessian-vector product is a central difference: error O(ε²)
    assert rel(unrolled(1e-4), exact) / rel(small, exact) > 30

    # parameters, BN running statistics and optimiser state are restored afterwards
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for n, p in zip(w_names, method.w_params, strict=True):
        buf = method.w_opt.state.get(p, {}).get("momentum_buffer")
        assert (buf is None and opt_before[n] is None) or torch.equal(buf, opt_before[n]), n
    assert torch.equal(net.alphas["cell"], alpha0)

    # and the check discriminates: the first-order gradient ∇_α L_val(w, α) is far off
    logits = functional_call(net, {**w0, "alphas.cell": alpha}, (val.x,))
    (first,) = torch.autograd.grad(F.cross_entropy(logits, val.y), alpha)
    assert rel(along(first), numeric) > 0.5


def test_second_order_arch_step_uses_unrolled_gradient():
    cfg, net, method, train, val = tiny_problem(w_lr=0.5, order=2)
    method.fd_radius = 1e-5
    _, expect = method.unrolled_arch_grads(val, train)
    alpha = net.alphas["cell"].detach().clone()
    w0 = [p.detach().clone() for p in method.w_params]
    method.arch_step(val, train)
    torch.testing.assert_close(net.alphas["cell"].grad, expect[0], rtol=1e-9, atol=1e-12)
    assert not torch.equal(net.alphas["cell"], alpha)
    assert all(torch.equal(p, q) for p, q in zip(method.w_params, w0, strict=True))


# ------------------------------------------------------------------------------- first order
def test_first_order_steps_touch_only_their_own_parameters():
    # a small clip so clipping is active and checked
    cfg, net, method, train, val = tiny_problem(torch.float32, order=1, grad_clip=0.05)
    alpha0 = [a.detach().clone() for a in method.a_params]
    w0 = [p.detach().clone() for p in method.w_params]

    # arch step: Adam on ∂L_val/∂α at fixed w (DARTS Eq. 3 with ξ = 0), w untouched
    loss = F.cross_entropy(net(val.x), val.y)
    g_alpha = torch.autograd.grad(loss, method.a_params)
    ref = [a.clone().requires_grad_() for a in alpha0]
    adam = torch.optim.Adam(ref, lr=cfg.a_lr, betas=cfg.a_betas, weight_decay=cfg.a_weight_decay)
    for r, g in zip(ref, g_alpha, strict=True):
        r.grad = g.clone()
    adam.step()
    method.arch_step(val, train)
    for a, r, a0 in zip(method.a_params, ref, alpha0, strict=True):
        assert not torch.equal(a, a0)
        torch.testing.assert_close(a.detach(), r.detach(), rtol=1e-6, atol=1e-7)
    for p, p0 in zip(method.w_params, w0, strict=True):
        assert torch.equal(p, p0)

    # weight step: clipped SGD with momentum and weight decay on ∂L_train/∂w, α untouched
    alpha1 = [a.detach().clone() for a in method.a_params]
    loss = F.cross_entropy(net(train.x), train.y)
    g_w = torch.autograd.grad(loss, method.w_params, allow_unused=True)
    ref_w = [p.detach().clone().requires_grad_() for p in method.w_params]
    for r, g in zip(ref_w, g_w, strict=True):
        r.grad = torch.zeros_like(r) if g is None else g.clone()
    assert torch.nn.utils.clip_grad_norm_(ref_w, cfg.grad_clip) > cfg.grad_clip
    sgd = torch.optim.SGD(ref_w, lr=method.w_opt.param_groups[0]["lr"], momentum=cfg.w_momentum,
                          weight_decay=cfg.w_weight_decay)
    sgd.step()
    method.weight_step(train)
    for p, r in zip(method.w_params, ref_w, strict=True):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-7)
    for a, a1 in zip(method.a_params, alpha1, strict=True):
        assert torch.equal(a, a1)


def test_step_reports_losses_and_accuracies():
    _, _, method, train, val = tiny_problem(torch.float32)
    stats = method.step(train, val)
    assert {"loss", "val_loss", "acc", "val_acc"} <= set(stats)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert method.global_step == 1


def test_learning_rate_is_cosine_annealed():
    _, _, method, _, _ = tiny_problem(torch.float32, epochs=4, w_lr=0.025, w_lr_min=0.001)
    lrs = []
    for epoch in range(4):
        method.begin_epoch(epoch)
        lrs.append(method.w_opt.param_groups[0]["lr"])
    expect = [0.001 + 0.5 * 0.024 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs == pytest.approx(expect)


# ------------------------------------------------------------------------------ end to end
def read_metrics(run_dir) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_search_end_to_end_writes_the_run_folder(tiny_cfg, tmp_path, space):
    cfg = tiny_cfg(space=space, subset=32)
    out = tmp_path / "run"
    result = search(cfg, out=out, progress=False)
    assert result.run_dir == out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "genotype.json", "checkpoint.pt", "log.txt",
            "result.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # no leftovers of atomic writes
    assert SearchConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg

    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1]
    kinds = {"darts": {"normal": (14, 8), "reduce": (14, 8)}, "nb201": {"cell": (6, 5)}}[space]
    for r in records:
        for key in ("train_loss", "train_acc", "search_val_loss", "search_val_acc", "val_loss",
                    "val_acc", "alpha_std", "lr"):
            assert math.isfinite(r[key]), key
        assert 0 <= r["val_acc"] <= 1 and r["skip_count"] >= 0
        assert {k: (len(v), len(v[0])) for k, v in r["alpha"].items()} == kinds
        for rows in r["alpha"].values():  # softmax weights per edge
            assert all(abs(sum(row) - 1) < 1e-3 for row in rows)
        assert parse_genotype(json.dumps(r["genotype"])).skip_count == r["skip_count"]
    assert records[1]["lr"] < records[0]["lr"]

    g = parse_genotype(str(out))
    assert g == result.genotype == parse_genotype(r["genotype_str"])
    assert g.space == space
    summary = json.loads((out / "result.json").read_text())
    assert summary["genotype"] == g.to_dict() and summary["epochs"] == 2
    log = (out / "log.txt").read_text()
    assert "epoch 2/2" in log and str(g) in log
    state = RunFolder(out).load_checkpoint(cfg)
    assert state["epoch"] == 1

    # the same folder again without resume: refused, nothing touched
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    with pytest.raises(DiffnasError, match="already holds a checkpoint; pass --resume"):
        search(cfg, out=out, progress=False)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_resume_equals_uninterrupted(tiny_cfg, tmp_path, interrupted_search, assert_same_run):
    cfg = tiny_cfg(space="nb201", subset=64, epochs=3)
    straight = search(cfg, out=tmp_path / "straight", progress=False)

    interrupted_search(cfg, tmp_path / "resumed", DARTS)
    assert len(read_metrics(tmp_path / "resumed")) == 1
    assert RunFolder(tmp_path / "resumed").load_checkpoint(cfg)["epoch"] == 0
    # a kill while epoch 1's metrics line was being written leaves half a line behind
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "lr": 0.0')
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)

    assert resumed.genotype == straight.genotype
    a, b, metrics = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert torch.equal(a["model"]["alphas.cell"], b["model"]["alphas.cell"])
    assert len(metrics) == 3
    assert "resumed at epoch 1" in (tmp_path / "resumed" / "log.txt").read_text()


def test_damaged_metrics_name_the_file_and_line(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(DiffnasError, match=r"metrics.jsonl line 2 is not a JSON record"):
        run.truncate_metrics(0)
    run.metrics.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
    assert run.truncate_metrics(1) == [{"epoch": 0}, {"epoch": 1}]
    assert run.read_metrics() == [{"epoch": 0}, {"epoch": 1}]


def test_resume_refuses_other_config_and_corrupt_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(space="nb201", subset=32, epochs=1)
    out = tmp_path / "run"
    search(cfg, out=out, progress=False)

    with pytest.raises(DiffnasError) as e:
        search(cfg.replace(channels=6, seed=7), out=out, resume=True, progress=False)
    msg = str(e.value)
    assert "another config" in msg and "channels: checkpoint 4, requested 6" in msg
    assert "seed: checkpoint 2, requested 7" in msg
    # device and data location do not make a different run
    RunFolder(out).load_checkpoint(cfg.replace(data_dir="/elsewhere"))

    bad = tmp_path / "corrupt"
    shutil.copytree(out, bad)
    (bad / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(DiffnasError) as e:
        search(cfg, out=bad, resume=True, progress=False)
    assert str(bad / "checkpoint.pt") in str(e.value) and "unreadable" in str(e.value)

    trunc = tmp_path / "truncated"
    shutil.copytree(out, trunc)
    data = (trunc / "checkpoint.pt").read_bytes()
    (trunc / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DiffnasError, match="checkpoint .*truncated.*checkpoint.pt is unreadable"):
        search(cfg, out=trunc, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(space="nb201", subset=32, epochs=2)
    out = tmp_path / "run"
    seen: dict[str, bytes] = {}
    original = DARTS.step

    def poisoned(self, train, val):
        stats = original(self, train, val)
        if self.epoch == 1:
            seen["checkpoint"] = (out / "checkpoint.pt").read_bytes()
            with torch.no_grad():  # a diverged weight, as a real blow-up leaves it
                self.w_params[0].fill_(float("nan"))
            stats["loss"] = float("nan")
        return stats

    monkeypatch.setattr(DARTS, "step", poisoned)
    with pytest.raises(DiffnasError) as e:
        search(cfg, out=out, progress=False)
    msg = str(e.value)
    assert "loss became nan at epoch 1 step 0" in msg
    assert f"checkpoint (epoch 0) is kept in {out / 'checkpoint.pt'}" in msg
    assert "\n" not in msg
    assert (out / "checkpoint.pt").read_bytes() == seen["checkpoint"]
    state = RunFolder(out).load_checkpoint(cfg)
    assert state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert len(read_metrics(out)) == 1
    assert msg in (out / "log.txt").read_text()
    monkeypatch.undo()
    search(cfg, out=out, resume=True, progress=False)  # and the run can go on from there
    assert len(read_metrics(out)) == 2


def test_nan_in_the_first_epoch_says_no_checkpoint_yet(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(space="nb201", subset=32, epochs=1)
    original = DARTS.step

    def poisoned(self, train, val):
        return {**original(self, train, val), "val_loss": float("inf")}

    monkeypatch.setattr(DARTS, "step", poisoned)
    with pytest.raises(DiffnasError) as e:
        search(cfg, out=tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "val_loss became inf at epoch 0 step 0" in msg
    assert "no checkpoint was written yet" in msg and "epoch -1" not in msg
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- configs and presets
@pytest.mark.parametrize(("field", "value", "kind"), [
    ("method", "nope", "method"), ("space", "hexagon", "search space"),
    ("objective", "mse", "objective"),
])
def test_unknown_names_list_the_valid_ones(field, value, kind):
    with pytest.raises(DiffnasError) as e:
        resolve_config(None, **{field: value})
    msg = str(e.value)
    assert msg.startswith(f"unknown {kind} {value!r}; valid: ")
    valid = {"method": "darts", "space": "darts, darts-imagenet, mbconv, nb201, nb201-imagenet",
             "objective": "ce"}[field]
    assert valid in msg


def test_unknown_preset_and_dataset(tiny_cfg, tmp_path):
    with pytest.raises(DiffnasError, match=r"unknown preset 'nope'; valid: .*darts-cifar10"):
        resolve_config("nope")
    with pytest.raises(DiffnasError, match=r"unknown dataset 'mnist-ish'; valid: .*cifar10.*"
                                           r"digits.*fashion-mnist.*folder:PATH"):
        search(tiny_cfg(dataset="mnist-ish"), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"epochs": 0}, "epochs must be at least 1, got 0"),
    ({"train_portion": 1.5}, "train portion must be in (0, 1), got 1.5"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"order": 3}, "order must be 1 or 2, got 3"),
    ({"device": "tpu"}, "device must be auto, cpu or cuda[:N], got 'tpu'"),
    ({"subset": 1}, "subset must be at least 2"),
    ({"color_jitter": (0.4, 0.4)}, "colour jitter needs four strengths"),
])
def test_invalid_values(overrides, needle):
    with pytest.raises(DiffnasError) as e:
        resolve_config(None, **overrides)
    assert needle in str(e.value)


def test_unknown_config_field():
    with pytest.raises(DiffnasError, match=r"unknown config field\(s\) epoch; valid: .*epochs"):
        SearchConfig.from_dict({"epoch": 3})


def test_presets_resolve_and_the_darts_paper_values():
    for name in PRESETS:
        resolve_config(name)  # each preset is a valid config
    c = resolve_config("darts-cifar10")
    # DARTS §3.1.1 / Appendix A.1: CIFAR-10 search
    assert (c.epochs, c.batch_size, c.layers, c.channels, c.train_portion) == (50, 64, 8, 16, 0.5)
    assert (c.w_lr, c.w_lr_min, c.w_momentum, c.w_weight_decay, c.grad_clip) == \
        (0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (c.a_lr, c.a_betas, c.a_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    # overrides win over the preset; None leaves the preset's value
    c = resolve_config("darts-cifar10", epochs=3, channels=None)
    assert (c.epochs, c.channels) == (3, 16)


def test_coerce_options():
    defaults = {"n": 3, "rate": 0.5, "flag": False, "betas": (0.9, 0.99), "mode": "a"}
    got = coerce_options("method 'x'", defaults, {"n": "7", "rate": "1e-3", "flag": "yes",
                                                  "betas": "0.5,0.9", "mode": "b"})
    assert got == {"n": 7, "rate": 1e-3, "flag": True, "betas": (0.5, 0.9), "mode": "b"}
    assert coerce_options("m", defaults, {"flag": "0"})["flag"] is False
    assert coerce_options("m", defaults, {"n": 5})["n"] == 5  # Python values pass through
    assert coerce_options("m", defaults, {}) == defaults
    with pytest.raises(DiffnasError, match=r"method 'x' has no option bogus; valid: betas, flag, "
                                           r"mode, n, rate"):
        coerce_options("method 'x'", defaults, {"bogus": "1"})
    with pytest.raises(DiffnasError, match=r"option n='seven': expected a value of type int "
                                           r"like 3"):
        coerce_options("method 'x'", defaults, {"n": "seven"})
    with pytest.raises(DiffnasError, match=r"option flag='maybe': expected a value of type bool"):
        coerce_options("method 'x'", defaults, {"flag": "maybe"})
    with pytest.raises(DiffnasError, match="has no option x; valid: none"):
        coerce_options("method 'darts'", {}, {"x": "1"})


def test_method_and_objective_options_are_checked(tiny_cfg):
    with pytest.raises(DiffnasError, match="method 'darts' has no option noise; valid: none"):
        build_search(tiny_cfg(method_args={"noise": "0.3"}), 1, 8, 10, 1, torch.device("cpu"))
    with pytest.raises(DiffnasError, match="objective 'ce' takes no options"):
        build_search(tiny_cfg(objective="ce", objective_args={"mask_ratio": "0.5"}), 1, 8, 10, 1,
                     torch.device("cpu"))


def test_search_colour_jitter_is_applied_and_needs_rgb_for_saturation(tiny_cfg, tmp_path):
    """``color_jitter`` reaches the search's batch augmentation (CDARTS' ImageNet search uses
    it): brightness jitter changes the run; saturation on greyscale digits is refused."""
    from diffnas.engine.search import search

    plain = search(tiny_cfg(epochs=1), out=tmp_path / "plain", progress=False)
    cfg = tiny_cfg(epochs=1, color_jitter=(0.4, 0.4, 0.0, 0.0))
    assert SearchConfig.from_dict(cfg.to_dict()).color_jitter == (0.4, 0.4, 0.0, 0.0)
    jittered = search(cfg, out=tmp_path / "jit", progress=False)
    assert jittered.history[-1]["train_loss"] != plain.history[-1]["train_loss"]
    with pytest.raises(DiffnasError, match="saturation and hue jitter need RGB images"):
        search(tiny_cfg(epochs=1, color_jitter=(0.0, 0.0, 0.4, 0.0)), out=tmp_path / "s",
               progress=False)
