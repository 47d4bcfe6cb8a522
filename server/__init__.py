"""ensemble-serving's inference server: loads a model repository and serves it over KServe V2 and V1 JSON.

It never imports torch (nor anything from `training/`).
"""

__version__ = "0.1.0"
