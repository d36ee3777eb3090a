"""End-to-end on CIFAR-10: the real Snakemake CLI downloads, trains ResNet-18s, attacks, analyses.

A generated ``cifar-10-python.tar.gz`` (200 training and 100 test images in the real format) is
served from 127.0.0.1; the run's config points ``data.sources.cifar10`` at it and gives the
SHA-256 of the generated batches in ``data.digests.cifar10`` (the jobs run in subprocesses, so
only the config can reach them). Everything else is the production path: the ``prepare_data``
rule, the content check of the batches and torchvision's CIFAR10 class, then training with
crop + flip augmentation, SGD-UAP and the Jacobian analysis, on the CPU.

Training uses Adam at 1e-3 here, not the paper profile's SGD at 0.05: on these noise images a
ResNet-18 with lambda = 0.5 diverges to NaN weights within one epoch at SGD 0.05 (and at 0.01),
since its initial Jacobian penalty is large (about 28). The test asserts finite weights and
metrics, so such a run would fail it instead of passing with NaN models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_download import assert_prepared_equals, make_cifar, publish, serve
from test_workflow import copy_workflow, snakemake

from jacreg.config import load_schema
from jacreg.data import load_prepared
from jacreg.models import load_checkpoint

EPS = 8 / 255


def _optional_analysis() -> dict:
    """Switch off the costly extras this test does not check, where the schema has them."""
    known = load_schema()["properties"]["analysis"]["properties"]
    return {"pgd_inputs": 0} if "pgd_inputs" in known else {}


def reduced_config(source: str, digests: dict[str, str]) -> dict:
    return {
        "run_name": "cifar",
        "datasets": ["cifar10"],
        "lambdas": [0.0, 0.5],
        "seeds": [0],
        "epsilons": {"cifar10": [EPS]},
        "data": {"sources": {"cifar10": source}, "digests": {"cifar10": digests}},
        "train": {"device": "cpu", "overrides": {"cifar10": {
            "architecture": "resnet18", "epochs": 1, "batch_size": 32, "augment": True,
            "optimizer": "adam", "lr": 0.001, "schedule": "constant", "weight_decay": 0.0}}},
        "attack": {"n_images": 40, "epochs": 1, "batch_size": 40, "device": "cpu",
                   "replicates": 1, "strong": {"restarts": 1, "epochs": 2}},
        "analysis": {"n_inputs": 20, "n_pairs": 30, "pairs_per_class_pair": 2,
                     "batch_size": 20, "device": "cpu", **_optional_analysis()},
    }


@pytest.mark.workflow
def test_cifar10_downloads_trains_attacks_and_is_analysed(tmp_path: Path) -> None:
    fake = make_cifar(n_train=200, n_test=100)
    (tmp_path / "workflow").mkdir()
    workdir = copy_workflow(tmp_path / "workflow")
    with serve(tmp_path / "mirror") as mirror:
        publish(fake, mirror.root)
        config = reduced_config(mirror.url, fake.digests)
        (workdir / "cifar.yaml").write_text(yaml.safe_dump(config))
        snakemake(workdir, "--cores", "2", "--configfile", "cifar.yaml")
        assert any(path.endswith("cifar-10-python.tar.gz") for path in mirror.requests)

    # downloaded, verified and converted once: 200 train = 160 fit + 40 held out for attacks;
    # the verified batches are in torchvision's layout, no staging folder is left
    for name, data in fake.payloads.items():
        assert (workdir / "data/raw/cifar-10-batches-py" / name).read_bytes() == data
    assert not list((workdir / "data/raw").glob(".staging-*"))
    prepared = load_prepared(workdir / "data/prepared/cifar10.pt")
    assert_prepared_equals(prepared, fake)
    assert prepared["x_train"].shape == (160, 3, 32, 32)

    metrics = json.loads((workdir / "reports/cifar/metrics.json").read_text())
    rows = metrics["rows"]
    assert {(r["dataset"], r["lambda"], r["seed"]) for r in rows} == {
        ("cifar10", 0.0, 0), ("cifar10", 0.5, 0)}
    for row in rows:
        assert row["eps"] == pytest.approx(EPS)
        for key in ("clean_accuracy", "uap_evasion_rate", "uap_fooling_rate",
                    "random_evasion_rate"):
            assert 0.0 <= row[key] <= 1.0
        assert row["jacobian_frobenius"] > 0 and row["stacked_jacobian_spectral"] > 0
        for key in ("jacobian_frobenius", "stacked_jacobian_spectral", "shared_metric_mean"):
            assert math.isfinite(row[key]), key
        model = load_checkpoint(workdir / row["checkpoint"])
        assert all(torch.isfinite(v).all() for v in model.state_dict().values()
                   if v.is_floating_point())
        assert not model.training
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        with torch.no_grad():
            assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        uaps = torch.load(workdir / row["uap"], weights_only=True)["uaps"]
        assert uaps.shape == (1, 1, 3, 32, 32)  # replicates x eps x C x H x W
        assert float(uaps.abs().max()) <= EPS + 1e-6
    assert (workdir / "reports/cifar/report.html").is_file()
    assert "augment" in (workdir / "logs/cifar/train/cifar10/lam0.5_seed0.log").read_text()

    # a later run needs neither the network nor the mirror: nothing to do
    proc = snakemake(workdir, "-n", "--cores", "1", "--configfile", "cifar.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # data.sources / data.digests say where the bytes come from and how to verify them, not
    # what they are: changing them prepares and trains nothing again (only the aggregate, which
    # records the config's SHA-256, reruns). A local source that does not exist is not even
    # looked at once the dataset is prepared.
    for label, data in [("default", {"sources": {"cifar10": None}}),
                        ("moved", {"sources": {"cifar10": str(tmp_path / "no-such-copy")},
                                   "digests": {}})]:
        (workdir / f"{label}.yaml").write_text(yaml.safe_dump(dict(config, data=data)))
        proc = snakemake(workdir, "-n", "--cores", "1", "--configfile", f"{label}.yaml")
        planned = {line.split()[0] for line in proc.stdout.splitlines()
                   if len(line.split()) == 2 and line.split()[1].isdigit()}
        assert not planned & {"prepare_data", "train", "attack", "evaluate"}, proc.stdout
