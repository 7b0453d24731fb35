#!/usr/bin/env python3
"""Tabulates run.sh's raw counters per stage, scaled from P patches to P=3136.

Columns: requested = global-memory bytes the threads asked for (what L1/L2 serve);
distinct = bytes of distinct 32-byte sectors per launch (what DRAM must move with an
infinite cache: a lower bound on DRAM traffic); minimum = the least any design must
move in device memory for the stage; host<->device = bytes copied over the bus.
"""
import sys
from collections import defaultdict

P_REAL, D, N, NS = 3136, 550, 200, 1000
L = D * (D + 1) // 2
G = 1e9


def load(path):
    k = defaultdict(lambda: defaultdict(float))
    c = {}
    for line in open(path):
        f = line.split()
        if not f or f[0] == "#":
            continue
        if f[0] == "K":
            stage = f[1]
            v = list(map(float, f[3:12]))
            s = k[stage]
            for name, x in zip(["launches", "blocks", "threads", "rb", "wb", "rs", "ws", "flops", "fp64"], v):
                s[name] += x
            k[stage].setdefault("names", set()).add(f[2])
        elif f[0] == "C":
            c[f[1]] = (float(f[2]), float(f[3]))
    return k, c


def minimum(stage):
    img = P_REAL * D * 4
    if stage == "fit":
        return N * img + P_REAL * L * 8, N * img, 0, N * P_REAL * D * (D + 1)
    if stage.startswith("factorize"):
        return P_REAL * L * (8 + 4), 0, P_REAL * (L + D) * 4, P_REAL * 2 * D**3 / 3
    per = 1 if stage == "score-1-per-call" else 64
    calls = -(-NS // per)
    return calls * P_REAL * L * 4 + NS * img, NS * img, NS * P_REAL * 4, NS * P_REAL * D * (D + 1)


def executed(s, scale):
    return "n/a" if s["flops"] == 0 else f"{s['flops'] * scale / G:,.0f}"


def fp64(s, scale):
    return "n/a" if s["flops"] == 0 else f"{s['fp64'] * scale / G:,.1f}"


def main():
    p = int(sys.argv[1])
    scale = P_REAL / p
    before, cb = load(sys.argv[2])
    after, ca = load(sys.argv[3])
    print(f"Traffic per stage on the emulator (P={p}, scaled to P={P_REAL}; d={D}, N={N}, {NS} images scored).")
    print("GB = 1e9 bytes. requested: bytes threads read+wrote in global memory (L1/L2 level); distinct: distinct")
    print("32-byte sectors per launch (DRAM traffic with an infinite cache, a lower bound); minimum: the least any")
    print("design moves in device memory (fit: images once + M2 written once; factorisation: M2 in, L⁻¹ out;")
    print("scoring: L⁻¹ once per call + images once); bus: host→device / device→host copies. The legacy kernels")
    print("carry no flop annotations (n/a); their launch counts are for P patches, the same at P=3136.\n")
    print("| stage | kernels | launches | requested GB | distinct GB | minimum GB | bus H→D / D→H GB | GFLOP executed (useful) | fp64 Gop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    stages = ["fit", "factorize-fp64", "factorize-df32", "score-1-per-call", "score-64-per-call"]
    for st in stages:
        mn, _, _, useful = minimum(st)
        for ver, k, c in (("before", before, cb), ("after", after, ca)):
            if st not in k:
                continue
            s = k[st]
            h2d, d2h = c.get(st, (0, 0))
            names = ", ".join(sorted(s["names"]))
            print(f"| {st} ({ver}) | {names} | {s['launches']:.0f} | "
                  f"{(s['rb'] + s['wb']) * scale / G:,.1f} | {(s['rs'] + s['ws']) * scale / G:,.1f} | {mn / G:,.1f} | "
                  f"{h2d * scale / G:,.2f} / {d2h * scale / G:,.2f} | {executed(s, scale)} ({useful / G:,.0f}) | "
                  f"{fp64(s, scale)} |")


main()
