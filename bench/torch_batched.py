#!/usr/bin/env python3
"""PaDiM's Gaussian stages in PyTorch on the embeddings padim's device timings use: the
comparator for the CUDA kernels (scripts/device-check.sh).

Two PyTorch forms, on the same card and the same inputs as `TestDeviceTimings`
(gpu/device_test.go writes them with PADIM_TIMINGS_DATA=DIR: train.f32 [32][P][D],
test.f32 [64][P][D], dist.f32 [64][P] padim's distances of test under its model):

  batched   what a careful PyTorch user writes: statistics with one bmm over all
            patches, torch.linalg.cholesky + solve_triangular for L^-1, scoring with
            bmm against L^-1; fit and factorisation in float32 and in float64 (the
            model is rounded to float32 and scored in float32 in both, as padim does);
  anomalib  anomalib's PaDiM (models/image/padim): per-patch covariance in a Python
            loop, torch.linalg.inv of the float32 covariances, matmul scoring.

The workload is padim's: N=200 training images (the 32 distinct ones cycled, in the
same order), eps=0.01, 1000 images scored in calls of 64 (the 64 test images cycled).
For every stage it reports the kernel time (CUDA events around the device work, inputs
already on the device) and the wall time including the host-to-device copies of the
embeddings from ordinary (pageable) host memory, where padim's pipeline hands them
over. TF32 is off (torch's default for matmul), so float32 means float32.

  python3 bench/torch_batched.py --data DIR --P 3136 --D 550 --json torch.json
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def load(path, n, P, D):
    x = np.fromfile(path, dtype="<f4")
    if x.size != n * P * D:
        sys.exit(f"{path}: {x.size} values, expected {n}x{P}x{D} (run TestDeviceTimings with PADIM_TIMINGS_DATA and the same P, D)")
    return x.reshape(n, P, D)


class Timer:
    """Wall time (host clock, after a synchronise) and kernel time (CUDA events)."""

    def __init__(self, dev):
        self.dev = dev
        self.cuda = dev.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def event(self):
        if not self.cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def elapsed(self, a, b):
        if not self.cuda:
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1e3


def batched(train_host, test_host, order, a, dtype, tm):
    """The batched form in arithmetic dtype: stage -> (kernel seconds, wall seconds)."""
    dev = tm.dev
    eps = 0.01
    out = {}
    n = len(order)
    P, D = train_host.shape[1], train_host.shape[2]
    # fit: the N images cross the bus, then mean and covariance with one bmm per chunk of patches
    host = np.ascontiguousarray(train_host[order])  # [N][P][D], pageable
    tm.sync()
    w0 = time.perf_counter()
    x = torch.from_numpy(host).to(dev)
    k0 = tm.event()
    mu = torch.empty(P, D, dtype=dtype, device=dev)
    cov = torch.empty(P, D, D, dtype=dtype, device=dev)
    step = max(1, min(P, (1 << 30) // (n * D * 8)))  # ~1 GiB of centred samples at a time
    for p0 in range(0, P, step):
        xc = x[:, p0:p0 + step, :].to(dtype).permute(1, 0, 2)  # [p][N][D]
        m = xc.mean(1, keepdim=True)
        xc = xc - m
        mu[p0:p0 + step] = m[:, 0, :]
        cov[p0:p0 + step] = torch.bmm(xc.transpose(1, 2), xc) / (n - 1)
    cov.diagonal(dim1=1, dim2=2).add_(eps)
    k1 = tm.event()
    tm.sync()
    out["fit"] = (tm.elapsed(k0, k1), time.perf_counter() - w0)
    del x, xc
    # factorisation: Sigma = L L^T, L^-1 by a triangular solve, rounded to float32
    tm.sync()
    w0 = time.perf_counter()
    k0 = tm.event()
    L, info = torch.linalg.cholesky_ex(cov)
    eye = torch.eye(D, dtype=dtype, device=dev).expand(P, D, D)
    linv = torch.linalg.solve_triangular(L, eye, upper=False).to(torch.float32)
    k1 = tm.event()
    tm.sync()
    bad = int((info != 0).sum())
    out["factorize"] = (tm.elapsed(k0, k1), time.perf_counter() - w0)
    del L, eye, cov
    mu32 = mu.to(torch.float32)
    # scoring: calls of a (the 64 test images cycled), from pageable host memory
    scored = 0
    kern = 0.0
    tm.sync()
    w0 = time.perf_counter()
    dist = None
    while scored < a.score:
        b = min(a.batch, a.score - scored)
        xb = torch.from_numpy(test_host[:b]).to(dev)
        k0 = tm.event()
        y = (xb - mu32).permute(1, 2, 0)  # [P][D][b]
        z = torch.bmm(linv, y)
        d = z.square().sum(1).sqrt().t()  # [b][P]
        k1 = tm.event()
        kern += tm.elapsed(k0, k1)
        if scored == 0:
            dist = d.cpu().numpy()
        scored += b
    tm.sync()
    out["score"] = (kern, time.perf_counter() - w0)
    return out, bad, dist


def anomalib(train_host, test_host, order, a, tm):
    """anomalib's PaDiM stages in float32: stage -> (kernel seconds, wall seconds)."""
    dev = tm.dev
    out = {}
    n = len(order)
    P, D = train_host.shape[1], train_host.shape[2]
    host = np.ascontiguousarray(train_host[order])
    tm.sync()
    w0 = time.perf_counter()
    e = torch.from_numpy(host).to(dev).permute(0, 2, 1)  # [N][D][P], anomalib's layout
    k0 = tm.event()
    mu = e.mean(0)
    cov = torch.zeros(D, D, P, device=dev)
    eye = torch.eye(D, device=dev)
    for i in range(P):  # MultiVariateGaussian._cov per patch
        xi = e[:, :, i] - e[:, :, i].mean(0, keepdim=True)
        cov[:, :, i] = xi.t() @ xi / (n - 1) + 0.01 * eye
    k1 = tm.event()
    tm.sync()
    out["fit"] = (tm.elapsed(k0, k1), time.perf_counter() - w0)
    del e
    tm.sync()
    w0 = time.perf_counter()
    k0 = tm.event()
    inv = torch.linalg.inv(cov.permute(2, 0, 1))
    k1 = tm.event()
    tm.sync()
    out["factorize"] = (tm.elapsed(k0, k1), time.perf_counter() - w0)
    del cov
    muT = mu.t()  # [P][D]
    scored = 0
    kern = 0.0
    dist = None
    tm.sync()
    w0 = time.perf_counter()
    while scored < a.score:
        b = min(a.batch, a.score - scored)
        xb = torch.from_numpy(test_host[:b]).to(dev)
        k0 = tm.event()
        delta = (xb - muT).permute(1, 0, 2)  # [P][b][D]
        d = (torch.matmul(delta, inv) * delta).sum(2).permute(1, 0).clamp(0).sqrt()  # [b][P]
        k1 = tm.event()
        kern += tm.elapsed(k0, k1)
        if scored == 0:
            dist = d.cpu().numpy()
        scored += b
    tm.sync()
    out["score"] = (kern, time.perf_counter() - w0)
    return out, dist


def rel(want, got):
    if want is None or got is None:
        return None
    w = np.asarray(want, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        return float("inf")
    return float(np.max(np.abs(w - g) / np.maximum(np.abs(w), 1e-6)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train.f32, test.f32 (and dist.f32) from TestDeviceTimings")
    ap.add_argument("--P", type=int, default=3136)
    ap.add_argument("--D", type=int, default=550)
    ap.add_argument("--N", type=int, default=200)
    ap.add_argument("--distinct", type=int, default=32)
    ap.add_argument("--score", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--forms", default="batched-fp32,batched-fp64,anomalib")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    tm = Timer(dev)
    train = load(os.path.join(a.data, "train.f32"), a.distinct, a.P, a.D)
    test = load(os.path.join(a.data, "test.f32"), a.batch, a.P, a.D)
    want = None
    if os.path.exists(os.path.join(a.data, "dist.f32")):
        want = np.fromfile(os.path.join(a.data, "dist.f32"), dtype="<f4").reshape(a.batch, a.P)
    order = [i % a.distinct for i in range(a.N)]
    # warm up: context, cuBLAS/cuSOLVER handles and kernels, on a few patches
    small = train[:, : min(8, a.P), :]
    batched(small, test[:, : small.shape[1], :], order, argparse.Namespace(score=a.batch, batch=a.batch), torch.float32, tm)
    res = {"tool": "PyTorch %s" % torch.__version__, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "P": a.P, "D": a.D, "N": a.N, "scored": a.score, "batch": a.batch, "tf32": False, "forms": {}}
    for form in a.forms.split(","):
        t0 = time.perf_counter()
        if form.startswith("batched-"):
            dtype = {"fp32": torch.float32, "fp64": torch.float64}[form.split("-")[1]]
            st, bad, dist = batched(train, test, order, a, dtype, tm)
            extra = {"not_positive_definite": bad}
        elif form == "anomalib":
            st, dist = anomalib(train, test, order, a, tm)
            extra = {}
        else:
            sys.exit(f"unknown form {form}")
        r = {"stages": {k: {"kernel_seconds": v[0], "wall_seconds": v[1]} for k, v in st.items()},
             "seconds": time.perf_counter() - t0, "distances_vs_padim": rel(want, dist), **extra}
        if dev.type == "cuda":
            r["peak_device_bytes"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        res["forms"][form] = r
        for k, v in st.items():
            print(f"{form:14s} {k:10s} kernels {v[0]:9.4f} s   wall incl. transfers {v[1]:9.4f} s")
        print(f"{form:14s} distances vs padim's (max relative): {r['distances_vs_padim']}")
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(res, f, indent=2)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
