"""The fixtures every suite shares live in the `testing` package (shared with benchmarks/)."""

pytest_plugins = ["testing.fixtures"]
