"""Support shared by tests/ and benchmarks/: ONNX model builders, model repositories, the server process
launcher and the pytest fixtures built on them.

Nothing here imports torch at module level, so the server tests, the image test and the benchmarks run
where training is not installed; only `testing.stand_ins` needs torch, and imports it when called.
"""
