#!/usr/bin/env python3
"""Export ImageNet ResNet / ResNet-CBAM weights for padim (optional; needs PyTorch).

The module below mirrors torchvision's ResNets and the CBAM authors' reference code
(Jongchan/attention-module, MODELS/model_resnet.py and cbam.py) with the same
parameter names, cut after the deepest tap (--taps, default layer1,layer2,layer3;
the paper's 1+2+3+4 is --taps layer1,layer2,layer3,layer4).

  # CBAM authors' checkpoint (dict with 'state_dict', keys prefixed 'module.')
  models/export.py export --arch resnet50_cbam --checkpoint RESNET50_CBAM.pth.tar --safetensors w.safetensors --taps 1,2,3,4
  padim backbone --arch resnet50_cbam --weights w.safetensors --layers 1,2,3,4 --out resnet50_cbam.onnx

  # or straight to ONNX, torchvision weights saved with torch.save(model.state_dict())
  models/export.py export --arch wide_resnet50_2 --checkpoint wide_resnet50_2.pth --onnx wrn50.onnx

  # tap outputs for given float32 weights and input (the Go-vs-PyTorch test)
  models/export.py taps --arch resnet50_cbam --weights w.safetensors --input x.safetensors --out taps.safetensors
"""
import argparse
import json
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- CBAM reference


class BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, relu=True, bn=True, bias=False):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16):
        super().__init__()
        self.mlp = nn.Sequential(Flatten(), nn.Linear(gate_channels, gate_channels // reduction_ratio), nn.ReLU(),
                                 nn.Linear(gate_channels // reduction_ratio, gate_channels))

    def forward(self, x):
        # The reference pools with a kernel of the whole map; global adaptive pools
        # are the same operation and export to ONNX with a dynamic batch.
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)


class ChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, 7, stride=1, padding=3, relu=False)

    def forward(self, x):
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class CBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


# ---------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, width=None, use_cbam=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.cbam = CBAM(planes, 16) if use_cbam else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = self.downsample(x) if self.downsample is not None else x
        if self.cbam is not None:
            out = self.cbam(out)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, width=None, use_cbam=False):
        super().__init__()
        width = width or planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.cbam = CBAM(planes * 4, 16) if use_cbam else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        if self.cbam is not None:  # after bn3, before the residual add
            out = self.cbam(out)
        return self.relu(out + residual)


ARCHES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, False),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, False),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, False),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, False),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], 2, False),
    # CBAM in every block, as ResidualNet(..., att_type='CBAM') builds it; the authors'
    # code stops at depth 101, resnet152_cbam follows the same pattern.
    "resnet50_cbam": (Bottleneck, [3, 4, 6, 3], 1, True),
    "resnet101_cbam": (Bottleneck, [3, 4, 23, 3], 1, True),
    "resnet152_cbam": (Bottleneck, [3, 8, 36, 3], 1, True),
}

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def parse_taps(s):
    """'layer1,layer2', '1,2,3,4' or '1+2+3+4' -> tap names in LAYERS order."""
    taps = []
    for f in s.replace("+", ",").replace(" ", ",").split(","):
        if not f:
            continue
        f = "layer" + f if f.isdigit() else f
        if f not in LAYERS:
            raise argparse.ArgumentTypeError(f"unknown tap {f!r} (taps: {', '.join(LAYERS)})")
        if f in taps:
            raise argparse.ArgumentTypeError(f"tap {f} given twice")
        taps.append(f)
    if not taps:
        raise argparse.ArgumentTypeError("no taps")
    return sorted(taps, key=LAYERS.index)


class ResNetTaps(nn.Module):
    """Stem and layer1 up to the deepest tap; forward returns the taps, shallowest first."""

    def __init__(self, arch, taps=("layer1", "layer2", "layer3")):
        super().__init__()
        block, layers, width_mul, cbam = ARCHES[arch]
        self.taps = list(taps)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.depth = max(LAYERS.index(t) for t in self.taps) + 1
        for i in range(self.depth):
            setattr(self, LAYERS[i], self._layer(block, 64 << i, layers[i], 1 if i == 0 else 2, width_mul, cbam))

    def _layer(self, block, planes, blocks, stride, width_mul, cbam):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample, planes * width_mul, cbam)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, None, planes * width_mul, cbam) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for i in range(self.depth):
            x = getattr(self, LAYERS[i])(x)
            if LAYERS[i] in self.taps:
                out.append(x)
        return tuple(out)


# ---------------------------------------------------------------- safetensors (no extra package needed)

_DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[b:en], dtype=_DT[e["dtype"]]).reshape(e["shape"])
    return out


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}[a.dtype]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    import os
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- commands


def load_checkpoint(model, path):
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: expected a state_dict or a dict with 'state_dict'")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    want = model.state_dict()
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        hint = "it stops before layer4: leave layer4 out of --taps" if all(k.startswith("layer4.") for k in missing) \
            else "is it a checkpoint of this architecture?"
        sys.exit(f"{path}: missing {len(missing)} tensors, first {missing[:3]} ({hint})")
    # A deeper ResNet's checkpoint has every tensor of a shallower one, and a CBAM
    # checkpoint every tensor of a plain ResNet: refuse the leftovers in the stages built.
    stages = ("conv1.", "bn1.") + tuple(LAYERS[i] + "." for i in range(model.depth))
    extra = sorted(k for k in sd if k.startswith(stages) and k not in want and not k.endswith("num_batches_tracked"))
    if extra:
        sys.exit(f"{path}: {len(extra)} tensors the architecture does not use, first {extra[:3]} "
                 "(a checkpoint of a deeper ResNet, or with CBAM? pick its --arch)")
    for k, v in want.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            sys.exit(f"{path}: tensor {k} has shape {tuple(sd[k].shape)}, the architecture needs {tuple(v.shape)}")
    model.load_state_dict({k: sd[k] for k in want if k in sd}, strict=False)


def cmd_export(a):
    model = ResNetTaps(a.arch, a.taps).eval()
    load_checkpoint(model, a.checkpoint)
    if a.safetensors:
        sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        write_safetensors(a.safetensors, sd, {"arch": a.arch, "source": a.checkpoint})
        print(f"wrote {a.safetensors}: {len(sd)} tensors")
    if a.onnx:
        x = torch.zeros(1, 3, a.size, a.size)
        torch.onnx.export(model, x, a.onnx, input_names=["input"], output_names=a.taps,
                          dynamic_axes={k: {0: "N"} for k in ["input"] + a.taps}, opset_version=13)
        try:
            import onnx
            m = onnx.load(a.onnx)
            for k, v in {"padim.arch": a.arch, "padim.weights": a.checkpoint, "padim.input": "input",
                         "padim.input_size": str(a.size), "padim.taps": ",".join(a.taps),
                         "padim.mean": "0.485,0.456,0.406", "padim.std": "0.229,0.224,0.225"}.items():
                p = m.metadata_props.add()
                p.key, p.value = k, v
            onnx.save(m, a.onnx)
        except ImportError:
            print("note: python onnx package absent; metadata_props not written (padim falls back to ImageNet "
                  f"defaults and taps layer1,layer2,layer3: pass `padim train --layers {','.join(a.taps)}`)")
        print(f"wrote {a.onnx}")


def cmd_taps(a):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = ResNetTaps(a.arch, a.taps).eval()
    w = read_safetensors(a.weights)
    sd = model.state_dict()
    missing = [k for k in sd if k not in w and not k.endswith("num_batches_tracked")]
    if missing:
        sys.exit(f"{a.weights}: missing {missing[:3]}")
    model.load_state_dict({k: torch.from_numpy(np.array(w[k])) for k in sd if k in w}, strict=False)
    x = torch.from_numpy(np.array(read_safetensors(a.input)["input"]))
    with torch.no_grad():
        out = {name: t.numpy().astype(np.float32) for name, t in zip(model.taps, model(x))}
        if a.f64:
            # the same function in float64: the reference that tells float32 rounding
            # (PyTorch's and ONNX Runtime's alike) from a real mismatch in deep nets
            out.update({name + ".f64": t.numpy() for name, t in zip(model.taps, model.double()(x.double()))})
    write_safetensors(a.out, out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="checkpoint -> safetensors weights and/or ONNX")
    e.add_argument("--arch", required=True, choices=sorted(ARCHES))
    e.add_argument("--checkpoint", required=True, help="torchvision state_dict or CBAM authors' .pth.tar")
    e.add_argument("--safetensors", help="write float32 weights for `padim backbone --weights`")
    e.add_argument("--onnx", help="write the ONNX graph directly")
    e.add_argument("--size", type=int, default=224)
    e.add_argument("--taps", type=parse_taps, default="layer1,layer2,layer3", help="outputs, e.g. 1,2,3,4 (default 1,2,3)")
    t = sub.add_parser("taps", help="run the module on an input (for the Go-vs-PyTorch test)")
    t.add_argument("--arch", required=True, choices=sorted(ARCHES))
    t.add_argument("--weights", required=True)
    t.add_argument("--input", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--taps", type=parse_taps, default="layer1,layer2,layer3")
    t.add_argument("--f64", action="store_true", help="also write each tap computed in float64, as NAME.f64")
    a = p.parse_args()
    if a.cmd == "export" and not (a.safetensors or a.onnx):
        p.error("export needs --safetensors and/or --onnx")
    {"export": cmd_export, "taps": cmd_taps}[a.cmd](a)


if __name__ == "__main__":
    main()
