"""Code generated from server/grpc/protos/ by `make grpc-gen`. Do not edit by hand."""
