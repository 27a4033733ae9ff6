"""The gRPC ceiling: grpc.aio on uvloop, as the service runs it, answering ModelInfer and
ModelStreamInfer by only parsing each request and sending a fixed answer of the service's
size, with no validation, batching or inference. What the service reaches over gRPC is a
fraction of this, as over HTTP of load_tests/ceiling.py.

The calls perf_analyzer makes before it measures (ServerMetadata, ModelMetadata, ModelConfig,
ModelStatistics) answer what a running service answers (`--like`), copied at start (the
statistics then count what the ceiling answered): the ceiling serves the service's model.
perf_analyzer needs its version named (`-x`) here.

    python -m load_tests.grpc_ceiling --like 127.0.0.1:8001 --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
import uvloop
from tritonclient.grpc import service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""inference.GRPCInferenceService, as the proto names it (load_tests reads no serving module)."""


def copy_of(target: str, model: str) -> dict[str, Any]:
    """The service's answers at `target` to the calls made before measuring, by method."""
    service = triton.InferenceServerClient(target)
    try:
        return {"ServerMetadata": service.get_server_metadata(), "ModelMetadata": service.get_model_metadata(model),
                "ModelConfig": service.get_model_config(model), "ModelStatistics": service.get_inference_statistics(model)}
    finally:
        service.close()


class Answers:
    """The service's answer to a request of n rows, in size and shape (zeros), made once per n.
    Outputs are taken as 4-byte values (FP32, as both shipped models answer)."""

    def __init__(self, metadata: pb.ModelMetadataResponse) -> None:
        self.metadata = metadata
        self._by_rows: dict[int, bytes] = {}

    def of(self, rows: int) -> bytes:
        found = self._by_rows.get(rows)
        if found is None:
            answer = pb.ModelInferResponse(model_name=self.metadata.name, model_version=self.metadata.versions[-1])
            for output in self.metadata.outputs:
                shape = [rows, *(abs(d) for d in output.shape[1:])]
                answer.outputs.add(name=output.name, datatype=output.datatype, shape=shape)
                answer.raw_output_contents.append(np.zeros(shape, np.float32).tobytes())
            found = self._by_rows[rows] = answer.SerializeToString()
        return found


def handler(copied: dict[str, Any]) -> grpc.GenericRpcHandler:
    answers = Answers(copied["ModelMetadata"])
    answered = {"requests": 0, "rows": 0}

    def answer(request: pb.ModelInferRequest) -> bytes:
        """Parsed (as the service's deserializer does), its inputs looked at, a fixed answer."""
        if not request.inputs or len(request.raw_input_contents) != len(request.inputs):
            raise ValueError("no raw inputs")
        rows = request.inputs[0].shape[0] if request.inputs[0].shape else 1
        answered["requests"] += 1
        answered["rows"] += rows
        return answers.of(rows)

    async def statistics(request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelStatisticsResponse:
        """The copied statistics with what was answered since (perf_analyzer reports them)."""
        found = pb.ModelStatisticsResponse()
        found.CopyFrom(copied["ModelStatistics"])
        for stats in found.model_stats:
            stats.inference_count += answered["rows"]
            stats.execution_count += answered["requests"]
            stats.inference_stats.success.count += answered["requests"]
        return found

    async def infer(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:
        return answer(request)

    async def stream(requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[bytes]:
        async for request in requests:
            # the client matches answers by id: made per request, as the service makes them
            reply = pb.ModelInferResponse.FromString(answer(request))
            reply.id = request.id
            yield pb.ModelStreamInferResponse(infer_response=reply).SerializeToString()

    def fixed(message: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return message
        return call

    fixed_answers = [("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse(live=True)),
                     ("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse(ready=True)),
                     ("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse(ready=True)),
                     ("ServerMetadata", pb.ServerMetadataRequest, copied["ServerMetadata"]),
                     ("ModelMetadata", pb.ModelMetadataRequest, copied["ModelMetadata"]),
                     ("ModelConfig", pb.ModelConfigRequest, copied["ModelConfig"])]
    handlers = {name: grpc.unary_unary_rpc_method_handler(fixed(message), request_deserializer=kind.FromString,
                                                          response_serializer=type(message).SerializeToString)
                for name, kind, message in fixed_answers}
    handlers["ModelStatistics"] = grpc.unary_unary_rpc_method_handler(
        statistics, request_deserializer=pb.ModelStatisticsRequest.FromString,
        response_serializer=pb.ModelStatisticsResponse.SerializeToString)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        infer, request_deserializer=pb.ModelInferRequest.FromString, response_serializer=None)
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=pb.ModelInferRequest.FromString, response_serializer=None)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve(port: int, like: str, model: str, max_message_bytes: int) -> None:
    copied = await asyncio.to_thread(copy_of, like, model)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((handler(copied),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"gRPC ceiling on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.grpc_ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", required=True, help="host:port of the service's gRPC, to copy the model's facts")
    parser.add_argument("--model", default="fashion-cnn")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-bytes", type=int, default=64 << 20)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.like, args.model, args.max_message_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
