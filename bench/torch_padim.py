#!/usr/bin/env python3
"""anomalib's PaDiM in PyTorch, timed stage by stage: the comparator for `padim bench`.

The algorithm follows anomalib (models/image/padim: torch_model.py, anomaly_map.py,
components/stats/multi_variate_gaussian.py): embeddings of every training image are
kept in memory, per patch covariance + 0.01*I in a Python loop, torch.linalg.inv on
the batch of covariances, distances with a batched matmul against the full inverse,
then bilinear upsampling and a 33-tap sigma=4 Gaussian blur (reflect border).

The backbone is models/export.py's module with weights from
`padim backbone --save-weights W.safetensors` (the same network padim runs in ONNX
Runtime), the images the same files, resized like padim (bilinear, antialias).

  python3 bench/torch_padim.py --weights w.safetensors --data padim-demo/wood-seed1-512 --n 200 --score 100 --json out.json
"""
import argparse
import glob
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
import export  # noqa: E402  (the PyTorch ResNet/CBAM module)


def load_images(paths, size, mean, std, loader="torchvision"):
    """Decode and resize to size² with the antialiased bilinear filter padim uses:
    torchvision (read_image, then F.interpolate antialias=True in float) or pil
    (anomalib's loader: Image.open().convert("RGB").resize(BILINEAR), antialiased
    over the whole image with reducing_gap=None, rounded to 8 bits)."""
    out = torch.empty(len(paths), 3, size, size)
    for i, p in enumerate(paths):
        if loader == "pil":
            from PIL import Image
            with Image.open(p) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=None)
            img = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255)
        else:
            from torchvision.io import read_image, ImageReadMode
            img = read_image(p, ImageReadMode.RGB).float().div_(255)[None]
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = (img - mean[:, None, None]) / std[:, None, None]
    return out


def embed(model, x, idx):
    l1, l2, l3 = model(x)
    e = torch.cat([l1, F.interpolate(l2, size=l1.shape[-2:], mode="nearest"), F.interpolate(l3, size=l1.shape[-2:], mode="nearest")], 1)
    return torch.index_select(e, 1, idx)


def gaussian_kernel(sigma=4.0):
    r = int(4 * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50_cbam", choices=sorted(export.ARCHES))
    ap.add_argument("--weights", required=True, help="float32 safetensors (padim backbone --save-weights)")
    ap.add_argument("--data", required=True, help="folder of images or an MVTec category (train/good)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--score", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dim", type=int, default=550)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--loader", default="torchvision", choices=["torchvision", "pil"], help="image decode and resize (see load_images)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    root = os.path.join(a.data, "train", "good") if os.path.isdir(os.path.join(a.data, "train", "good")) else a.data
    files = sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                   if p.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")))
    if not files:
        sys.exit(f"no images in {root}")
    pick = lambda off, n: [files[(off + i) % len(files)] for i in range(n)]
    train, test = pick(0, a.n), pick(a.n, a.score)

    model = export.ResNetTaps(a.arch).eval()
    w = export.read_safetensors(a.weights)
    model.load_state_dict({k: torch.from_numpy(np.array(w[k])) for k in model.state_dict() if k in w}, strict=False)
    model = model.to(dev)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    total = 256 + 512 + 1024 if a.arch != "resnet18" else 64 + 128 + 256
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(1024))[: min(a.dim, total)].to(dev)
    t = {k: 0.0 for k in ["decode", "backbone+embedding", "fit", "factorize", "score", "map"]}

    def timed(name, f, *args):
        sync()
        s = time.perf_counter()
        r = f(*args)
        sync()
        t[name] += time.perf_counter() - s
        return r

    start = time.perf_counter()
    embeddings = []
    with torch.no_grad():
        for lo in range(0, len(train), a.batch):
            x = timed("decode", load_images, train[lo:lo + a.batch], a.size, mean, std, a.loader).to(dev)
            embeddings.append(timed("backbone+embedding", embed, model, x, idx).cpu() if dev.type == "cpu" else timed("backbone+embedding", embed, model, x, idx))

        def fit():
            e = torch.vstack(embeddings)
            n, c, h, w_ = e.shape
            e = e.reshape(n, c, h * w_)
            mu = e.mean(0)
            cov = torch.zeros(c, c, h * w_, device=e.device)
            eye = torch.eye(c, device=e.device)
            for i in range(h * w_):  # anomalib's MultiVariateGaussian._cov per patch
                xi = e[:, :, i] - e[:, :, i].mean(0, keepdim=True)
                cov[:, :, i] = xi.t() @ xi / (n - 1) + 0.01 * eye
            return mu, cov, (h, w_)

        mu, cov, grid = timed("fit", fit)
        inv = timed("factorize", lambda: torch.linalg.inv(cov.permute(2, 0, 1)))
        del cov
        train_s = time.perf_counter() - start

        kern = gaussian_kernel().to(dev)
        r = kern.numel() // 2
        s0 = time.perf_counter()
        for lo in range(0, len(test), a.batch):
            x = timed("decode", load_images, test[lo:lo + a.batch], a.size, mean, std, a.loader).to(dev)
            e = timed("backbone+embedding", embed, model, x, idx)

            def score(e):
                b, c, h, w_ = e.shape
                delta = (e.reshape(b, c, h * w_) - mu).permute(2, 0, 1)
                d = (torch.matmul(delta, inv) * delta).sum(2).permute(1, 0)
                return d.reshape(b, 1, h, w_).clamp(0).sqrt()

            d = timed("score", score, e)

            def amap(d):
                m = F.interpolate(d, size=(a.size, a.size), mode="bilinear", align_corners=False)
                m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), kern.view(1, 1, 1, -1))
                m = F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), kern.view(1, 1, -1, 1))
                return m.amax(dim=(1, 2, 3))

            timed("map", amap, d)
        score_s = time.perf_counter() - s0

    P, D = grid[0] * grid[1], idx.numel()
    res = {
        "tool": "anomalib-style PaDiM (PyTorch %s)" % torch.__version__, "device": str(dev),
        "threads": torch.get_num_threads(), "n_train": a.n, "n_score": a.score, "patches": P, "dim": D,
        "stages_seconds": t, "train_seconds": train_s, "score_seconds": score_s, "end_to_end_seconds": train_s + score_s,
        "gaussian_seconds": t["fit"] + t["factorize"] + t["score"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_bytes": P * (D * D + D) * 4,
    }
    if dev.type == "cuda":
        res["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    for k, v in t.items():
        print(f"{k:20s} {v:9.3f} s")
    print(f"train {train_s:.2f} s, score {score_s:.2f} s, end to end {train_s + score_s:.2f} s; "
          f"Gaussian stages {res['gaussian_seconds']:.2f} s; peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
