"""Tests for :mod:`jacreg.models`: shapes and checkpoints that refuse anything but weights."""

from __future__ import annotations

import pytest
import torch

from jacreg.models import (
    ARCHITECTURES,
    CHECKPOINT_FORMAT,
    build_model,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

KWARGS = {
    "cnn_small": {"in_channels": 1, "num_classes": 10, "image_size": 28},
    "cnn": {"in_channels": 1, "num_classes": 10, "image_size": 28},
    "resnet18": {"in_channels": 3, "num_classes": 10, "image_size": 32},
}


def _input(kwargs: dict, n: int = 2, seed: int = 0, size: int | None = None) -> torch.Tensor:
    side = size or kwargs["image_size"]
    shape = (n, kwargs["in_channels"], side, side)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_registry_is_covered():
    assert set(ARCHITECTURES) == set(KWARGS)


@pytest.mark.parametrize("architecture", sorted(KWARGS))
def test_architecture_output_shape(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, **KWARGS[architecture]).eval()
    with torch.no_grad():
        out = model(_input(KWARGS[architecture]))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("architecture,kwargs", [
    ("cnn_small", {"in_channels": 3, "num_classes": 10, "image_size": 32}),
    ("cnn", {"in_channels": 3, "num_classes": 7, "image_size": 32}),
])
def test_cnns_adapt_to_other_input_sizes(architecture, kwargs):
    torch.manual_seed(0)
    out = build_model(architecture, **kwargs).eval()(_input(kwargs))
    assert out.shape == (2, kwargs["num_classes"])


def test_unknown_architecture_raises():
    with pytest.raises(ValueError, match="cnn_small"):
        build_model("vgg16")


@pytest.mark.parametrize("architecture,size", [("cnn_small", None), ("resnet18", 8)])
def test_checkpoint_round_trip(tmp_path, architecture, size):
    # resnet18 pools adaptively: 8x8 inputs keep the CPU time small
    torch.manual_seed(1)
    kwargs = KWARGS[architecture]
    model = build_model(architecture, **kwargs)
    model.train()
    with torch.no_grad():
        # moves BatchNorm running statistics off their defaults
        model(_input(kwargs, n=4, seed=1, size=size))
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(model, path, architecture, kwargs, meta={"lambda": 0.5, "seed": 3})
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert loaded.checkpoint_meta == {"lambda": 0.5, "seed": 3}
    model.eval()
    x = _input(kwargs, n=3, seed=2, size=size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp files


def test_load_checkpoint_refuses_code_running_pickle(malicious_file):
    path, marker = malicious_file
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_load_checkpoint_refuses_mismatched_architecture(tmp_path):
    torch.manual_seed(0)
    small = build_model("cnn_small", **KWARGS["cnn_small"])
    path = tmp_path / "lying.pt"
    save_checkpoint(small, path, "cnn", KWARGS["cnn"])  # cnn_small weights, labelled "cnn"
    with pytest.raises(ValueError, match="do not match architecture 'cnn'"):
        load_checkpoint(path)
    save_checkpoint(small, path, "cnn_small", KWARGS["cnn_small"])  # control: honest label
    assert isinstance(load_checkpoint(path), type(small))


def test_load_checkpoint_refuses_missing_and_extra_keys(tmp_path):
    torch.manual_seed(0)
    state = build_model("cnn_small", **KWARGS["cnn_small"]).state_dict()
    base = {"format": CHECKPOINT_FORMAT, "architecture": "cnn_small",
            "arch_kwargs": KWARGS["cnn_small"], "meta": {}}
    missing = dict(state)
    missing.pop("classifier.3.bias")
    extra = dict(state, **{"extra.weight": torch.zeros(1)})
    for i, sd in enumerate((missing, extra)):
        path = tmp_path / f"ckpt{i}.pt"
        torch.save(dict(base, state_dict=sd), path)
        with pytest.raises(ValueError, match="do not match"):
            load_checkpoint(path)


@pytest.mark.parametrize("payload", [
    torch.zeros(3),
    {"state_dict": {}},
    {"format": "other-format", "architecture": "cnn_small"},
], ids=["tensor", "dict-without-format", "wrong-format"])
def test_load_checkpoint_refuses_non_checkpoints(tmp_path, payload):
    path = tmp_path / "not_a_checkpoint.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a jacreg checkpoint"):
        load_checkpoint(path)
