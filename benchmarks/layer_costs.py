"""Time a convolution, an RNN and self-attention over a grid of n and d.

A larger version of the measurement in chapter 12 ("CNN vs RNN vs
self-attention"), for running on your own hardware, e.g. a GPU:

    python benchmarks/layer_costs.py --ns 64 256 1024 4096 --ds 64 256 1024 --out costs.csv

Prints one row per configuration, the fitted log-log slopes, and the
sequence length where attention becomes slower than the RNN; with ``--out``
it also writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import csv

import torch

from seqcourse import costs, utils


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--ds", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--n-fixed", type=int, default=256, help="n of the sweep over d")
    parser.add_argument("--d-fixed", type=int, default=64, help="d of the sweep over n")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: best available)")
    parser.add_argument("--out", default=None, help="write the rows to this CSV file")
    args = parser.parse_args(argv)

    device = utils.get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    utils.seed_everything(0)
    by_n = costs.measure_grid(costs.KINDS, args.ns, [args.d_fixed], args.batch_size, device, args.repeats)
    by_d = costs.measure_grid(costs.KINDS, [args.n_fixed], args.ds, args.batch_size, device, args.repeats)
    rows = by_n + by_d
    print(f"device {device}, batch {args.batch_size}, median of {args.repeats}")
    print(f"{'kind':>10s} {'n':>6s} {'d':>6s} {'ms':>10s}")
    for r in rows:
        print(f"{r['kind']:>10s} {r['n']:6d} {r['d']:6d} {r['seconds'] * 1e3:10.3f}")
    for kind in costs.KINDS:
        tn = [r["seconds"] for r in by_n if r["kind"] == kind]
        td = [r["seconds"] for r in by_d if r["kind"] == kind]
        print(f"{kind:>10s}: slope vs n {costs.loglog_slope(args.ns[-4:], tn[-4:]):5.2f}, "
              f"vs d {costs.loglog_slope(args.ds[-3:], td[-3:]):5.2f}")
    t_rnn = [r["seconds"] for r in by_n if r["kind"] == "rnn"]
    t_att = [r["seconds"] for r in by_n if r["kind"] == "attention"]
    cross = costs.crossover(args.ns, t_att, t_rnn)
    print("attention slower than the RNN from n =", "none on this grid" if cross is None else f"{cross:.0f}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
