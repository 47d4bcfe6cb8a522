"""Wire formats: KServe V2 / Open Inference Protocol JSON (`v2`), the simple `{"instances"}` JSON (`v1`).

Pure functions from decoded bodies to numpy arrays and back; the HTTP handlers in `server.app` stay thin.
"""
