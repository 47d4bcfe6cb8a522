"""The HTTP transport: V2 (JSON and binary tensors) and V1 routes over the data plane, on uvicorn."""
