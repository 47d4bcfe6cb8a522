"""ensemble-serving's training half: data, BatchNorm networks, schedules, search, ensembles, ONNX export."""

__version__ = "0.1.0"
