"""DrNAS' progressive learning on the loop's stages: the schedule (stage boundary, K before and
after, ops per edge after pruning), what is carried across the switch (weights widened with
tied copies, α pruned, momentum grown, one cosine), presets, errors and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.engine.search import build_search, search, stage_config
from diffnas.errors import DiffnasError
from diffnas.methods.drnas import DrNAS
from diffnas.methods.widen import widen_state
from diffnas.spaces import build_supernet
from diffnas.spaces.ops import DilConv, SepConv, Zero

CPU = torch.device("cpu")
PROG = {"drop_none": "1", "progressive_k": "4,2", "progressive_keep": "3"}


def _cfg(tiny_cfg, **args):
    return tiny_cfg(method="drnas", space="darts", epochs=3, layers=3, subset=32,
                    method_args={**PROG, **args})


def _stage_two(cfg, m0):
    """The loop's stage switch, by hand: the finished method's next space, a new build, carry."""
    plan = DrNAS.stage_epochs(cfg)
    spec = m0.next_stage(1)
    net, _, m1 = build_search(stage_config(cfg, plan[1], spec), 1, 8, 10, 4, CPU, None, 1, spec,
                              plan[0], cfg.epochs)
    m1.carry_over(m0)
    return spec, net, m1


def test_progressive_schedule_and_exact_resume(tiny_cfg, tmp_path, interrupted_search,
                                               assert_same_run):
    """Stage boundary, K before/after and ops per edge in a run; resume exact inside stage 2
    and when cut at the switch (the switch then happens on resume)."""
    cfg = _cfg(tiny_cfg)
    assert DrNAS.stage_epochs(cfg) == [1, 2]
    result = search(cfg, out=tmp_path / "full", progress=False)
    assert [r["stage"] for r in result.history] == [0, 1, 1]
    stages = json.loads((tmp_path / "full" / "stages.json").read_text())
    assert [(s["first_epoch"], s["epochs"]) for s in stages] == [(0, 1), (1, 2)]
    sup = stages[1]["space"]["supernet"]
    assert sup["partial_channels"] == 2
    assert {len(o) for rows in sup["edge_ops"].values() for o in rows} == {3}  # 7 ops → 3
    # one cosine over the 3 epochs of both stages (not restarted at the switch)
    c = cfg
    want = [c.w_lr_min + 0.5 * (c.w_lr - c.w_lr_min) * (1 + math.cos(math.pi * e / 3))
            for e in range(3)]
    assert [r["lr"] for r in result.history] == pytest.approx(want)
    # the result uses only ops the last stage kept (7 ops without none)
    names = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
    g = result.genotype
    for kind, pairs in (("normal", g.normal), ("reduce", g.reduce)):
        for i, (op, src) in enumerate(pairs):
            edge = sum(2 + n for n in range(i // 2)) + src
            assert names.index(op) in sup["edge_ops"][kind][edge]
    log = (tmp_path / "full" / "log.txt").read_text()
    assert "stage 2/2 from epoch 2" in log and "ops per edge 3" in log
    interrupted_search(cfg, tmp_path / "cut", DrNAS, at=1)  # stage 2's second epoch
    assert len(torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["stages"]) == 2
    search(cfg, out=tmp_path / "cut", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    original = DrNAS.step

    def cut(self, train, val):
        if self.stage == 1:
            raise KeyboardInterrupt
        return original(self, train, val)

    DrNAS.step = cut
    try:
        with pytest.raises(KeyboardInterrupt):
            search(cfg, out=tmp_path / "switch", progress=False)
    finally:
        DrNAS.step = original
    assert len(torch.load(tmp_path / "switch" / "checkpoint.pt", weights_only=True)["stages"]) == 1
    search(cfg, out=tmp_path / "switch", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "switch")


def test_stage_switch_prunes_by_alpha_widens_k_and_carries_the_state(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    net0, obj0, m0 = build_search(cfg, 1, 8, 10, 4, CPU)
    torch.manual_seed(3)
    with torch.no_grad():
        for a in net0.alphas.values():
            a.copy_(torch.randn_like(a))
        for p in net0.weight_parameters():  # distinct values, so copies can be traced
            p.copy_(torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    batch = obj0.prepare(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,)), g)
    m0.begin_epoch(0)
    net0.train()
    m0.step(batch, batch)  # momentum buffers and Adam state exist
    alphas0 = {k: a.detach().clone() for k, a in net0.alphas.items()}
    spec, net1, m1 = _stage_two(cfg, m0)
    # K 4 → 2: every op of the stage-2 supernet sees C/2 channels
    edges0, edges1 = net0.mixed_edges(), net1.mixed_edges()
    assert {e.partial_channels for e in edges0} == {4}
    assert {e.partial_channels for e in edges1} == {2}
    # per edge: the 3 ops with the largest α kept (built), α of the others set to 0
    for kind, a0 in alphas0.items():
        kept = spec["supernet"]["edge_ops"][kind]
        mask = net1.op_mask(kind)
        for e, ops in enumerate(kept):
            assert ops == sorted(a0[e].topk(3).indices.tolist())
        a1 = net1.alphas[kind].detach()
        assert torch.equal(a1[mask], a0[mask]) and (a1[~mask] == 0).all()
        w = m1.alpha_weights()[kind]
        assert (w[~mask] == 0).all() and torch.allclose(w.sum(1), torch.ones(w.shape[0]))
    # ops not kept are not built; kept conv ops grew from C/4 to C/2, old channels in place
    checked = 0
    for e0, e1 in zip(edges0, edges1, strict=True):
        for o0, o1 in zip(e0.ops, e1.ops, strict=True):
            if isinstance(o1, Zero):
                continue
            if isinstance(o1, SepConv):
                c0, c1 = e0.c // 4, e1.c // 2
                w0, w1 = o0.first.pw.weight, o1.first.pw.weight
                assert w0.shape[:2] == (c0, c0) and w1.shape[:2] == (c1, c1)
                assert torch.equal(w1[:c0, :c0], w0)
                checked += 1
    assert checked > 0
    # the rest of the network is copied as it is
    new = dict(net1.named_parameters())
    outside = [n for n, _ in net0.named_parameters() if ".ops." not in n and "alphas" not in n]
    assert outside and all(torch.equal(dict(net0.named_parameters())[n], new[n]) for n in outside)
    # the momentum of a grown weight is grown with the same copies; Adam's α state carried
    p0 = dict(net0.named_parameters())
    for name, p in net1.named_parameters():
        buf = m1.w_opt.state.get(p, {}).get("momentum_buffer")
        if p.requires_grad and id(p) in {id(q) for q in m1.w_params}:
            assert buf is not None and buf.shape == p.shape, name
            old = m0.w_opt.state[p0[name]]["momentum_buffer"]
            assert torch.equal(buf[tuple(slice(0, s) for s in old.shape)], old)
    for a_old, a_new in zip(m0.a_params, m1.a_params, strict=True):
        s0, s1 = m0.a_opt.state[a_old], m1.a_opt.state[a_new]
        assert torch.equal(s0["exp_avg"], s1["exp_avg"]) and int(s0["step"]) == int(s1["step"])


def test_widening_ties_the_copied_channels_through_an_op():
    torch.manual_seed(0)
    old = build_supernet("darts", 8, 1, 10, 1, partial_channels=4)
    new = build_supernet("darts", 8, 1, 10, 1, partial_channels=2)
    with torch.no_grad():
        for p in old.parameters():
            p.copy_(torch.randn_like(p))
    plans = widen_state(old, new)
    assert plans
    seen = 0
    for e0, e1 in zip(old.mixed_edges(), new.mixed_edges(), strict=True):
        for o0, o1 in zip(e0.ops, e1.ops, strict=True):
            blocks = ([(o0.first, o1.first), (o0.second, o1.second)] if isinstance(o0, SepConv)
                      else [(o0, o1)] if isinstance(o0, DilConv) else [])
            for b0, b1 in blocks:
                c0, c1 = b0.dw.weight.shape[0], b1.dw.weight.shape[0]
                assert c1 == 2 * c0
                for j in range(c0, c1):  # new channel j copies some old channel s, tied
                    s = [s for s in range(c0) if torch.equal(b1.dw.weight[j], b0.dw.weight[s])]
                    assert len(s) == 1
                    assert torch.equal(b1.pw.weight[:c0, j], b0.pw.weight[:, s[0]])
                    seen += 1
    assert seen > 0
    with pytest.raises(DiffnasError, match="may only keep or lower the partial-channel"):
        widen_state(new, build_supernet("darts", 8, 1, 10, 1, partial_channels=4))


def test_alpha_is_frozen_for_the_warmup_of_each_stage(tiny_cfg):
    cfg = _cfg(tiny_cfg, arch_warmup_epochs="1")
    _, _, m0 = build_search(cfg, 1, 8, 10, 4, CPU)
    m0.begin_epoch(0)
    assert m0.arch_frozen()
    _, _, m1 = _stage_two(cfg, m0)
    m1.begin_epoch(0)
    assert m1.arch_frozen()  # the stage's own first epoch
    m1.begin_epoch(1)
    assert not m1.arch_frozen()


def test_progressive_presets_follow_the_reference():
    c = resolve_config("drnas-cifar10")
    opts = DrNAS.resolve_options(c.method_args)[0]
    assert DrNAS.stage_epochs(c) == [25, 25]
    assert DrNAS.progression(opts) == ([6, 4], [4])
    assert opts["drop_none"] and opts["arch_warmup_epochs"] == 10
    assert (c.channels, c.layers, c.batch_size, c.w_lr, c.w_lr_min, c.a_lr) == \
        (36, 20, 64, 0.1, 0.0, 6e-4)
    assert DrNAS.supernet_options(c)["partial_channels"] == 6
    cpu = resolve_config("drnas-cpu")
    assert DrNAS.stage_epochs(cpu) == [2, 2]
    assert DrNAS.progression(DrNAS.resolve_options(cpu.method_args)[0]) == ([4, 2], [4])
    assert DrNAS.stage_epochs(resolve_config("drnas-nb201-cifar10")) == [100]


@pytest.mark.parametrize(("args", "message"), [
    ({"progressive_k": "6"}, "at least 2"),
    ({"progressive_k": "4,2", "progressive_keep": "4,3"}, "one fewer"),
    ({"progressive_k": "2,4", "progressive_keep": "4"}, "no larger than the one before"),
    ({"progressive_k": "4,x", "progressive_keep": "4"}, "comma-separated list of integers"),
    ({"progressive_k": "4,2", "progressive_keep": "4", "partial_channels": "2"}, "disagree"),
    ({"progressive_k": "4,2", "progressive_keep": "9", "drop_none": "1"}, "more ops than"),
    ({**PROG, "regularisers": "prune"}, "use one of the two"),
])
def test_progressive_option_errors(tiny_cfg, args, message):
    cfg = tiny_cfg(method="drnas", space="darts", epochs=3, layers=3, method_args=args)
    with pytest.raises(DiffnasError, match=message):
        build_search(cfg, 1, 8, 10, 4, CPU)
