"""Send the demo digit to the server over gRPC (Open Inference Protocol) and print the answer.

python -m server.demo.grpc_client --target 127.0.0.1:8001 --token "$TOKEN"
"""

from __future__ import annotations

import argparse
import sys

import grpc
import numpy as np

from protos import inference_pb2, inference_pb2_grpc
from server.demo.setup import DEMO_MODEL, SAMPLE_PIXELS


def main() -> int:
    """Run one ModelInfer call and print the predicted digit and probabilities."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", default=DEMO_MODEL)
    args = parser.parse_args()
    pixels = np.asarray(SAMPLE_PIXELS, dtype=np.float32).reshape(1, 64) / 16
    request = inference_pb2.ModelInferRequest(model_name=args.model, id="demo-grpc")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(pixels.astype("<f4").tobytes())
    with grpc.insecure_channel(args.target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply = stub.ModelInfer(
                request, metadata=[("authorization", f"Bearer {args.token}")], timeout=30
            )
        except grpc.RpcError as exc:
            sys.stderr.write(f"error: {exc.code().name}: {exc.details()}\n")
            return 1
    probabilities = np.frombuffer(reply.raw_output_contents[0], dtype="<f4")
    sys.stdout.write(
        f"predicted digit: {int(probabilities.argmax())}\n"
        f"probabilities: {np.round(probabilities, 4).tolist()}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
