"""Test-wide setup: the shared fixtures, and gRPC off in test processes unless a test asks for it.

The fixtures every suite shares live in the `testing` package (shared with benchmarks/). gRPC's default
port (8001, as Triton's) would be shared by every in-process app, every test and every other session on
the machine; tests that serve gRPC choose a free port (testing.server_process does).
"""

import os

os.environ.setdefault("ENSEMBLE_GRPC_PORT", "0")

pytest_plugins = ["testing.fixtures"]
