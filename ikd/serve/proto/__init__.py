"""The v2 gRPC messages: inference.proto and the protobuf code generated from it (see the .proto for how)."""
