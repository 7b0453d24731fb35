"""Calls every RPC of the Open Inference Protocol's gRPC service with stubs
compiled from the official proto by grpc_tools, the way a Python station
does, and prints what it got as one JSON document.

    python3 oip_client.py PROTO_DIR OUT_DIR ADDR MODEL IMAGE...

The stubs are compiled at run time into OUT_DIR. grpc_tools older than 1.30
(Debian 12 ships 1.14) bundles a protoc that predates proto3 `optional`
(the proto's model_version and version fields): the messages are then
compiled by the system protoc (protobuf-compiler) from the official proto,
and the service stubs by grpc_tools from a copy without the `optional`
labels, which changes no byte on the wire.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

proto_dir, out, addr, model = sys.argv[1:5]
images = [open(p, "rb").read() for p in sys.argv[5:]]
name = "open_inference_grpc.proto"
notes = []


def grpc_tools_protoc(src_dir, *flags):
    from grpc_tools import protoc
    return protoc.main(["grpc_tools.protoc", "-I" + src_dir, *flags, os.path.join(src_dir, name)]) == 0


if not grpc_tools_protoc(proto_dir, "--python_out=" + out, "--grpc_python_out=" + out):
    notes.append("grpc_tools' protoc cannot read proto3 optional: messages by the system protoc, stubs from a copy without the labels")
    subprocess.run(["protoc", "-I" + proto_dir, "--python_out=" + out, os.path.join(proto_dir, name)], check=True)
    plain = os.path.join(out, "plain")
    os.makedirs(plain, exist_ok=True)
    text = open(os.path.join(proto_dir, name)).read()
    open(os.path.join(plain, name), "w").write(re.sub(r"\boptional\s+(?=string\b)", "", text))
    if not grpc_tools_protoc(plain, "--grpc_python_out=" + out):
        sys.exit("grpc_tools could not compile the service stubs")
sys.path.insert(0, out)

import grpc  # noqa: E402
import open_inference_grpc_pb2 as pb  # noqa: E402
import open_inference_grpc_pb2_grpc as pbg  # noqa: E402

stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
res = {"notes": notes}
res["live"] = stub.ServerLive(pb.ServerLiveRequest()).live
res["ready"] = stub.ServerReady(pb.ServerReadyRequest()).ready
res["model_ready"] = stub.ModelReady(pb.ModelReadyRequest(name=model)).ready
md = stub.ServerMetadata(pb.ServerMetadataRequest())
res["server"] = {"name": md.name, "extensions": list(md.extensions)}
mm = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
res["model"] = {"name": mm.name, "platform": mm.platform, "inputs": [[t.name, t.datatype] for t in mm.inputs],
                "outputs": [[t.name, t.datatype] for t in mm.outputs]}


def floats(b):
    return list(struct.unpack("<%df" % (len(b) // 4), b))


# typed contents: BYTES images in bytes_contents
req = pb.ModelInferRequest(model_name=model, id="py-1")
t = req.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
t.contents.bytes_contents.extend(images)
r = stub.ModelInfer(req)
outs = {o.name: raw for o, raw in zip(r.outputs, r.raw_output_contents)}
res["infer"] = {"id": r.id, "version": r.model_version, "score": floats(outs["score"]), "defect": list(outs["defect"]),
                "threshold_source": r.parameters["threshold_source"].string_param}

# raw_input_contents: Triton's length-prefixed BYTES, the map asked for
req = pb.ModelInferRequest(model_name=model)
req.inputs.add(name="image", datatype="BYTES", shape=[1])
req.outputs.add(name="score")
req.outputs.add(name="anomaly_map")
req.raw_input_contents.append(struct.pack("<I", len(images[0])) + images[0])
r = stub.ModelInfer(req)
res["raw"] = {"score": floats(r.raw_output_contents[0]), "map_shape": list(r.outputs[1].shape),
              "map_head": floats(r.raw_output_contents[1][:16])}

# an error comes back as a status code
try:
    stub.ModelInfer(pb.ModelInferRequest(model_name="nope"))
    res["error"] = "none"
except grpc.RpcError as e:
    res["error"] = e.code().name
print(json.dumps(res))
shutil.rmtree(os.path.join(out, "plain"), ignore_errors=True)
