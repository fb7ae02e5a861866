"""In-process A/B of a change to the search iteration: one process, one supernet, the same
batches, the change switched on and off in alternating rounds.

On the shared 2-core machine, fresh processes of the same tree differ by about ±5 % in CPU
time, so a change worth a few per cent cannot be read from process-to-process comparisons
(``cpu_speed.py``); within one process the rounds agree to about ±1 %. The change comes as a
Python file that defines ``enable(on: bool)`` and patches what it measures (a module
attribute, a method), e.g.::

    import torch.nn.functional as F
    _conv, _on = F.conv2d, [False]
    def enable(on): _on[0] = on
    def _patched(*args, **kw): ...  # the new path when _on[0], else _conv(*args, **kw)
    F.conv2d = _patched

    .venv/bin/python benchmarks/search_ab.py PATCH.py --rounds 6

Prints one JSON line: median CPU-seconds per first-order DARTS iteration off and on (each
round the median of ``--iters`` iterations after one warm-up), their ratio, and every round.
The default config is issue 16's (8 channels × 5 cells, batch 32, 28×28×1, one thread).
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patch", help="a Python file defining enable(on: bool)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per side (alternating)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per round")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=28, help="input height and width")
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    enable = runpy.run_path(args.patch)["enable"]  # patches on import, switched by enable()

    from diffnas.config import resolve_config
    from diffnas.engine.search import build_search

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch_size, args.size
    cfg = resolve_config(args.preset, batch_size=b, channels=args.channels, layers=args.layers,
                         device="cpu")
    net, objective, method = build_search(cfg, args.in_channels, s, 10, 100, torch.device("cpu"))

    def batch() -> object:
        x = torch.randn(b, args.in_channels, s, s, generator=g)
        return objective.prepare(x, torch.randint(0, 10, (b,), generator=g), g)

    batches = [(batch(), batch()) for _ in range(2)]
    method.begin_epoch(0)
    net.train()
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            enable(on)
            method.step(*batches[0])  # warm-up after the switch
            times = []
            for i in range(args.iters):
                t0 = time.process_time()
                method.step(*batches[i % 2])
                times.append(time.process_time() - t0)
            rounds[on].append(statistics.median(times))
    off, on = statistics.median(rounds[False]), statistics.median(rounds[True])
    print(json.dumps({"off_cpu_s": round(off, 4), "on_cpu_s": round(on, 4),
                      "ratio_off_over_on": round(off / on, 4),
                      "rounds_off": [round(x, 4) for x in rounds[False]],
                      "rounds_on": [round(x, 4) for x in rounds[True]],
                      "config": {k: v for k, v in vars(args).items() if k != "patch"}}))


if __name__ == "__main__":
    main()
