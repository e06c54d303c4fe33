"""rpc: gRPC servicers, protobuf converters, the error-to-status mapping and
server assembly. Never imports onnxruntime."""
