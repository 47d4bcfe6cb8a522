"""The gRPC transport: Triton's GRPCInferenceService over the data plane (codec + service)."""
