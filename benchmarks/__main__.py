"""`python -m benchmarks <command> [options]`: every benchmark and experiment behind one entry point.

Each command is a module with a ``main(argv)``, so ``python -m benchmarks.<module>`` keeps working too.
Results go to docs/ (the figures live there, never in these help texts).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, what it measures); the modules are imported only when their command runs, so a
# command whose dependencies are absent (wrk, torch, tritonclient, a GPU) does not stop the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("benchmarks.run", "`make bench`: our server against the compute and HTTP limits and a baseline"),
    "compare": ("benchmarks.compare", "the server at several git revisions, side by side under one load"),
    "soak": ("benchmarks.soak", "keep one running server busy, then read its resident memory"),
    "reliability-soak": ("benchmarks.reliability_soak", "memory under good and refused requests"),
    "reliability-table": ("benchmarks.reliability_table", "docs/reliability.md's table from recorded runs"),
    "gpu": (
        "benchmarks.gpu_bench",
        "CUDA / TensorRT execution providers against the CPU one (`make gpu-check`)",
    ),
    "observability": (
        "benchmarks.observability_bench",
        "the request log's and tracing's cost per request (the hook alone, or whole apps in process)",
    ),
    "quality": (
        "benchmarks.quality.run",
        "`make quality`: default ensembles against scikit-learn baselines",
    ),
    "scaling": ("benchmarks.scaling", "req/s and CPU per request for --workers 1..N"),
    "grpc": ("benchmarks.grpc_bench", "perf_analyzer -i grpc cells beside HTTP"),
    "connections": ("benchmarks.connection_overhead", "the connection limits' CPU per request, in process"),
    "asgi-load": ("benchmarks.experiments.asgi_load", "experiment: CPU per request of the app, no sockets"),
    "protocol": ("benchmarks.experiments.protocol_bench", "experiment: V2 JSON against binary codec costs"),
    "serve-latency": ("benchmarks.experiments.serve_latency", "experiment: single-row latency, V2 JSON"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return (
        "usage: python -m benchmarks <command> [options]  (<command> --help for its options)\n\n"
        + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"python -m benchmarks {command}", *rest]  # so argparse names the command in its messages
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
