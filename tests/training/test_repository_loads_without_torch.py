"""A written repository is usable where only the server's libraries exist: a child Python in which torch
(and the onnx package) cannot be imported reads the manifest with the server's schema, verifies every
checksum, runs every member with plain onnxruntime and averages them as the server does."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from testing.stand_ins import dataset, export_all, torch_output, trained
from training.repository import write_version

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    sys.modules["onnx"] = None
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort

    from server.manifest import read_manifest, sha256_file
    from training.ensemble_predict import average_predictions

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch was importable: the test proves nothing")

    version_dir, x_path, out_path = map(Path, sys.argv[1:4])
    manifest = read_manifest(version_dir)
    outputs = []
    for member in manifest.members:
        if sha256_file(version_dir / member.file) != member.sha256:
            raise SystemExit(f"checksum mismatch: {member.file}")
        session = ort.InferenceSession(str(version_dir / member.file), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == [manifest.member_output]
        outputs.append(session.run(None, {manifest.input.name: np.load(x_path)})[0])
    result = average_predictions(outputs, manifest.task)
    np.savez(out_path, **result)
    assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules if sys.modules[name])
    print("ok", len(outputs))
    """
)


@pytest.mark.parametrize(
    ("kinds", "task"), [(["mlp", "cnn", "mlp"], "classification"), (["reg", "reg"], "regression")]
)
def test_repository_loads_and_predicts_without_torch(tmp_path: Path, kinds: list[str], task: str) -> None:
    members = export_all(kinds, task, tmp_path / "members")
    labels = ["a", "b", "c"] if task == "classification" else None
    version_dir = write_version(tmp_path / "repo", "check", members, task=task, labels=labels)  # type: ignore[arg-type]
    x, _ = dataset(task, n=37, seed=11)
    np.save(tmp_path / "x.npy", x)

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(version_dir), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", str(len(kinds))]

    served = np.load(tmp_path / "out.npz")
    expected = np.mean([torch_output(trained(k, seed), x, task) for seed, k in enumerate(kinds)], axis=0)
    key = "probabilities" if task == "classification" else "prediction"
    np.testing.assert_allclose(served[key], expected, atol=1e-5, rtol=1e-5)
    if task == "classification":
        assert served["label"].tolist() == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert served["spread"].shape == expected.shape
