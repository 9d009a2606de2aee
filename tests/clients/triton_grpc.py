"""Drive sealserve with the official tritonclient gRPC client, in its own process.

tritonclient.grpc registers the same ``inference.*`` protobuf names as the
server's own stubs, so the two cannot share a process; the tests run this
script and read its JSON answer from stdout.

    python tests/clients/triton_grpc.py TARGET TOKEN MODEL NPY_FILE
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    """Health, metadata and inference, with the token in the authorization metadata."""
    target, token, model, npy = sys.argv[1:5]
    headers = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url=target)
    result: dict[str, object] = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(model, headers=headers),
    }
    metadata = client.get_model_metadata(model, headers=headers, as_json=True)
    result["metadata"] = metadata
    x = np.load(npy)
    inputs = [grpcclient.InferInput("input", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    answer = client.infer(model, inputs, headers=headers)
    result["probabilities"] = answer.as_numpy("probabilities").tolist()
    try:
        client.infer(model, inputs, headers={"authorization": "Bearer not-a-token"})
    except InferenceServerException as exc:
        result["bad_token_status"] = exc.status()
    try:
        client.infer("no-such-model", inputs, headers=headers)
    except InferenceServerException as exc:
        result["missing_status"] = exc.status()
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
