"""Test-wide setting: gRPC is off in test processes unless a test asks for it.

Its default port (8001, as Triton's) would be shared by every in-process app, every test and every other
session on the machine; tests that serve gRPC choose a free port (tests.helpers.server_process does).
"""

import os

os.environ.setdefault("ENSEMBLE_GRPC_PORT", "0")
