"""One-off experiments kept for reruns (`python -m benchmarks` lists them); not part of `make bench`."""
