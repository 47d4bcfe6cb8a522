"""Generate server/grpc/generated/ from the .proto files beside this script (`make grpc-gen`).

protoc writes top-level imports (`import model_config_pb2`) and registers every message in protobuf's
default descriptor pool. Two rewrites make the output a well-behaved subpackage:

- imports become relative (`from . import model_config_pb2`), so the code lives under server.grpc;
- the files go into a private descriptor pool (`generated/_pool.py`) instead of the default one, because
  tritonclient ships its own copy of the same `inference` package: a process that imports both (a test
  run, a user's script) would otherwise fail with "duplicate symbol" on whichever comes second.

Needs grpcio-tools (a dev dependency, pinned so the output is reproducible); the server never runs this.
Usage: python server/grpc/protos/generate.py [OUT_DIR]   (default: server/grpc/generated)
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
DEFAULT_OUT = PROTOS.parent / "generated"
FILES = ("model_config.proto", "grpc_service.proto")
MODULES = tuple(f.removesuffix(".proto") for f in FILES)

POOL_MODULE = '''"""The private descriptor pool of the generated modules here (see protos/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

INIT_MODULE = '''"""Code generated from server/grpc/protos/ by `make grpc-gen`. Do not edit by hand."""
'''


def rewrite(source: str) -> str:
    """Relative imports of sibling modules and the private pool instead of the default one."""
    for module in MODULES:
        for suffix in ("_pb2", "_pb2_grpc"):
            name = module + suffix
            source = re.sub(rf"^import {name} as ", f"from . import {name} as ", source, flags=re.M)
            source = re.sub(rf"^from {name} import ", f"from .{name} import ", source, flags=re.M)
            source = re.sub(rf"^import {name}$", f"from . import {name}", source, flags=re.M)
    if "_descriptor_pool.Default()" in source:
        source = source.replace("_descriptor_pool.Default()", "_pool.POOL")
        source = source.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            "from google.protobuf import descriptor_pool as _descriptor_pool  # noqa: F401\n"
            "from . import _pool\n",
        )
    return source


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) into a temporary folder, rewrite, and write the modules into `out`."""
    from grpc_tools import protoc  # dev dependency: imported here so the module imports without it

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        args += [f"--grpc_python_out={tmp}", *(str(PROTOS / f) for f in FILES)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for path in sorted(Path(tmp).iterdir()):
            if path.name == "model_config_pb2_grpc.py":
                continue  # model_config.proto defines no service: protoc writes an empty stub
            target = out / path.name
            target.write_text(rewrite(path.read_text()))
            written.append(target)
    for name, text in (("_pool.py", POOL_MODULE), ("__init__.py", INIT_MODULE)):
        (out / name).write_text(text)
        written.append(out / name)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path)
