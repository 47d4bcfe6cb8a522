from pathlib import Path

import numpy as np
import pytest
import torch

from training.models import Standardize, build_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _stats(f: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(f, 2.0, np.float32), np.full(f, 4.0, np.float32)


def test_standardize_is_the_first_layer() -> None:
    s = Standardize([1.0, 2.0], [2.0, 4.0])
    out = s(torch.tensor([[3.0, 10.0]]))
    assert torch.allclose(out, torch.tensor([[1.0, 2.0]]))
    model = build_model("mlp", 2, 3, None, np.array([1.0, 2.0]), np.array([2.0, 4.0]))
    assert isinstance(next(iter(model.children())), Standardize)


@pytest.mark.parametrize("bn_position", ["before", "after"])
def test_mlp_bn_position_orders_layers(bn_position: str) -> None:
    model = build_model("mlp", 5, 3, None, *_stats(5), width=8, depth=2, bn_position=bn_position, dropout=0.1)
    kinds = [type(m).__name__ for m in model.body.net]
    first = (
        ["Linear", "BatchNorm1d", "ReLU"] if bn_position == "before" else ["Linear", "ReLU", "BatchNorm1d"]
    )
    assert kinds[:3] == first and kinds.count("Dropout") == 2 and kinds[-1] == "Linear"
    model.eval()
    assert model(torch.randn(4, 5)).shape == (4, 3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 16), (3, 2, 2)])
def test_cnn_reshapes_flat_rows(shape: tuple[int, ...]) -> None:
    f = int(np.prod(shape))
    model = build_model("cnn", f, 4, shape, *_stats(f), width=4, depth=2).eval()
    assert model(torch.randn(3, f)).shape == (3, 4)


def test_regression_output_is_in_target_units() -> None:
    model = build_model(
        "mlp", 3, 1, None, *_stats(3), target_mean=np.array([100.0]), target_std=np.array([10.0])
    )
    model.eval()
    torch.nn.init.zeros_(model.body.net[-1].weight)
    torch.nn.init.zeros_(model.body.net[-1].bias)
    assert torch.allclose(model(torch.randn(2, 3)), torch.full((2, 1), 100.0))


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="--arch cnn needs image-shaped inputs"):
        build_model("cnn", 4, 2, None, *_stats(4))
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("rnn", 4, 2, None, *_stats(4))
    with pytest.raises(ValueError, match="bn_position"):
        build_model("mlp", 4, 2, None, *_stats(4), bn_position="middle")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is the legacy exporter, on purpose
@pytest.mark.parametrize(("arch", "shape"), [("mlp", None), ("cnn", (1, 8, 8)), ("cnn", (2, 32))])
def test_exports_to_onnx_with_a_dynamic_batch_axis(tmp_path: Path, arch: str, shape: tuple | None) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build_model(arch, 64, 10, shape, *_stats(64), width=8, depth=2).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 64),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = np.random.default_rng(n).normal(size=(n, 64)).astype(np.float32)
        (out,) = session.run(None, {"input": x})
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_emb_sz_rule_is_fastais() -> None:
    from training.models import emb_sz_rule

    assert [emb_sz_rule(n) for n in (2, 5, 10, 100, 10**6)] == [2, 4, 6, 21, 600]


def test_table_model_embeds_categories_and_fills_missing_numbers() -> None:
    from types import SimpleNamespace

    from training.models import TabularNet, build_table_model

    columns = [
        SimpleNamespace(name="n", kind="numeric", categories=()),
        SimpleNamespace(name="c", kind="categorical", categories=("a", "b", "c")),
    ]
    X = np.array([[1.0, 0], [np.nan, 1], [3.0, 2], [4.0, np.nan]] * 4, dtype=np.float32)
    model = build_table_model(columns, X, 3, width=8, depth=1)
    assert isinstance(model, TabularNet)
    assert [e.num_embeddings for e in model.core.embeddings] == [5]  # 3 values + missing + rare/unseen
    assert model.core.body.net[0].in_features == 1 + 1 + 4  # number, its missing indicator, embedding 4
    out = model.eval()(torch.from_numpy(X))
    assert out.shape == (16, 3) and torch.isfinite(out).all()


def test_one_hot_is_a_frozen_identity_lookup() -> None:
    from training.models import category_encoder

    table = category_encoder(4, "onehot")
    assert not table.weight.requires_grad
    np.testing.assert_array_equal(table(torch.tensor([0, 3])).numpy(), [[1, 0, 0, 0], [0, 0, 0, 1]])
    assert category_encoder(4, "embedding").embedding_dim == 3
    with pytest.raises(ValueError, match="unknown category encoding"):
        category_encoder(4, "hash")
