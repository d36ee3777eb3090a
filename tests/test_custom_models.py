"""Your own models: import paths the config names, checkpoints that never import anything else,
BatchNorm/Dropout models analysed in eval mode, and state dicts trained elsewhere
(src/jacreg/user_code.py, src/jacreg/models.py, src/jacreg/pretrained.py)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jacreg.custom_data import prepare_custom
from jacreg.evaluate import evaluate_model
from jacreg.io import save_torch
from jacreg.jacobian import per_sample_jacobians
from jacreg.models import build_model, load_checkpoint, save_checkpoint
from jacreg.pretrained import import_model, read_state_dict
from jacreg.user_code import UntrustedArchitectureError, trust, trusted

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom"
NET = "digits_net:build"
KWARGS = {"in_channels": 1, "num_classes": 3, "image_size": 8, "width": 4, "dropout": 0.5}


@pytest.fixture()
def no_trust():
    """Leave the process-wide allow-list as it was."""
    before = trusted()
    trust([], [])
    yield
    trust(before.architectures, before.code_dirs)


def _probe_module(folder: Path) -> tuple[str, Path]:
    """A module that touches a marker file when it is imported: (module name, marker)."""
    name = f"jacreg_probe_{uuid.uuid4().hex}"
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).touch()\n"
        "import torch\n"
        "def build(in_channels, num_classes, image_size):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(in_channels * image_size ** 2,"
        " num_classes))\n")
    return name, marker


def test_checkpoint_naming_an_unnamed_import_path_is_refused_without_importing(tmp_path,
                                                                               no_trust):
    name, marker = _probe_module(tmp_path)
    architecture = f"{name}:build"
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, architecture, {"in_channels": 1, "num_classes": 3,
                                                "image_size": 8})
    for allowed in (None, ["other_package.models:build"]):  # None: the process-wide list
        with pytest.raises(UntrustedArchitectureError) as info:
            load_checkpoint(path, allowed=allowed, code_dirs=[tmp_path])
        message = str(info.value)
        assert str(path) in message and architecture in message and "not imported" in message
    assert name not in sys.modules and not marker.exists()
    # control: named by the config, the same checkpoint loads (and the module does run)
    trust([architecture], [tmp_path])
    loaded = load_checkpoint(path)
    assert marker.exists() and name in sys.modules
    assert torch.equal(loaded[1].weight, model[1].weight)


def test_factory_output_is_checked_against_the_data(tmp_path, no_trust):
    from jacreg.models import check_logits

    trust([NET], [EXAMPLE])
    model = build_model(NET, **KWARGS)
    check_logits(model, 1, 8, 8, 3, "here")
    with pytest.raises(ValueError, match="here: the model maps inputs .* expected logits of "
                                         "shape \\(2, 4\\)"):
        check_logits(model, 1, 8, 8, 4, "here")
    with pytest.raises(ValueError, match="unexpected keyword argument 'depth'"):
        build_model(NET, **KWARGS, depth=3)


def _trained_bn_dropout_model() -> nn.Module:
    """The example's BatchNorm + Dropout CNN after a few training steps (running statistics
    away from their defaults)."""
    torch.manual_seed(0)
    model = build_model(NET, allowed=[NET], code_dirs=[EXAMPLE], **KWARGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 3
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def test_bn_dropout_jacobians_are_eval_mode_and_match_finite_differences():
    model = _trained_bn_dropout_model()
    model.train()  # as a user might pass it: the analysis must not use batch stats or masks
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    first = per_sample_jacobians(model, x, batch_size=5)
    assert model.training  # its mode is restored
    assert torch.equal(per_sample_jacobians(model, x, batch_size=5), first)  # no random masks
    alone = per_sample_jacobians(model, x[:2], batch_size=1)  # no batch statistics either
    torch.testing.assert_close(alone, first[:2], rtol=1e-5, atol=1e-7)
    # central differences of the eval-mode model in float64, every input coordinate
    reference = model.double().eval()
    h = 1e-6
    for i in range(2):
        base = x[i].double().reshape(-1)
        steps = torch.eye(base.numel(), dtype=torch.float64) * h
        with torch.no_grad():
            plus = reference((base + steps).reshape(-1, 1, 8, 8))
            minus = reference((base - steps).reshape(-1, 1, 8, 8))
        numeric = ((plus - minus) / (2 * h)).T  # K x d
        torch.testing.assert_close(first[i].double(), numeric, rtol=1e-4, atol=1e-5)


def test_bn_dropout_model_evaluation_gives_the_same_numbers_twice(tmp_path, no_trust):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (30, 8, 8), dtype=np.uint8),
              "y_train": np.arange(30) % 3,
              "x_test": rng.integers(0, 256, (24, 8, 8), dtype=np.uint8),
              "y_test": np.arange(24) % 3}
    np.savez(tmp_path / "d.npz", **arrays)
    data = tmp_path / "d.pt"
    prepare_custom("tiny", {"format": "npz", "path": str(tmp_path / "d.npz"),
                            "attack_holdout": 0}, data)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(_trained_bn_dropout_model(), checkpoint, NET, KWARGS)
    uaps = tmp_path / "uaps.pt"
    v = 0.2 * torch.sign(torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(2)))
    save_torch({"eps": torch.tensor([0.2], dtype=torch.float64), "uaps": v[None]}, uaps)
    trust([NET], [EXAMPLE])
    settings = {"n_inputs": 12, "n_pairs": 20, "pairs_per_class_pair": 2, "batch_size": 8,
                "pgd_inputs": 6, "pgd_steps": 2}
    runs = [evaluate_model(checkpoint, uaps, data, "tiny", 0.0, 0, settings, torch.device("cpu"))
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["class_names"] == ["0", "1", "2"]
    # the splits as prepared, which the report's "data splits" row names
    assert runs[0]["splits"] == {"train": 30, "attack": 30, "test": 24, "attack_split": "train"}
    for entry, expected in (({"attack_holdout": 6}, {"train": 24, "attack": 6,
                                                     "attack_split": "held_out"}),
                            ({}, {"train": 30, "attack": 9, "attack_split": "own"})):
        if not entry:  # the file's own attack split
            np.savez(tmp_path / "d.npz", **arrays, x_attack=arrays["x_test"][:9],
                     y_attack=np.arange(9) % 3)
        prepare_custom("tiny", {"format": "npz", "path": str(tmp_path / "d.npz"), **entry}, data)
        splits = evaluate_model(checkpoint, uaps, data, "tiny", 0.0, 0, settings,
                                torch.device("cpu"))["splits"]
        assert splits == dict(expected, test=24), splits


def test_state_dicts_trained_elsewhere_become_checkpoints(tmp_path, no_trust):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (30, 8, 8), dtype=np.uint8),
              "y_train": np.arange(30) % 3,
              "x_test": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
              "y_test": np.arange(12) % 3}
    np.savez(tmp_path / "d.npz", **arrays)
    data = tmp_path / "d.pt"
    prepare_custom("tiny", {"format": "npz", "path": str(tmp_path / "d.npz")}, data)
    model = _trained_bn_dropout_model().eval()
    extra = {"width": 4, "dropout": 0.5}
    trust([NET], [EXAMPLE])
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(model.state_dict(), plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "epoch": 3}, wrapped)
    x = torch.rand(4, 1, 8, 8)
    for source in (plain, wrapped):
        out = tmp_path / f"{source.stem}.ckpt"
        import_model(source, out, "tiny", 0.1, 2, NET, extra, data)
        loaded = load_checkpoint(out)
        assert loaded.checkpoint_meta["pretrained"] and loaded.checkpoint_meta["lambda"] == 0.1
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="weights do not match architecture"):
        import_model(plain, tmp_path / "x.ckpt", "tiny", 0.0, 0, NET, {"width": 8}, data)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_state_dict_file_that_would_run_code_is_refused(malicious_file):
    path, marker = malicious_file
    with pytest.raises(ValueError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()
