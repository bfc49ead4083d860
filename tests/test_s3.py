"""The same path through the S3 protocol: a moto server on 127.0.0.1 holds datasets and storage."""

from __future__ import annotations

import pytest
import s3fs

from qm_dagster import load
from qm_dagster.config import Settings
from qm_dagster.dataset import DatasetRoot
from qm_dagster.importers import ImportSpec, import_version
from tests.conftest import BUCKET, materialize_version, shared
from tests.images import real_photos, write_image
from tests.test_image_metrics import reference_values

pytestmark = pytest.mark.slow  # a moto S3 server and whole versions materialized through it


SECRETS = {  # fake credentials, distinctive enough to search every output for
    "AWS_ACCESS_KEY_ID": "AKIAQMFAKEEXAMPLE042",
    "AWS_SECRET_ACCESS_KEY": "qmFake/Secret+Key0123456789abcdefghijklmnop",
    "AWS_SESSION_TOKEN": "qmFakeSessionToken0123456789",
}


def test_materialize_from_and_to_s3(s3, tmp_path, monkeypatch, capfd):
    """A whole version read from and written to S3, values exact. With credentials in the
    environment, neither the keys nor a pre-signed URL appear in any event (messages,
    metadata), the report or the output; `qm report` signs a link on request instead."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    photos = real_photos()
    for name, rgb in photos.items():
        write_image(tmp_path / "src" / f"{name}.png", rgb)
    settings = Settings(
        datasets=f"s3://{BUCKET}/datasets",
        storage=f"s3://{BUCKET}/storage",
        workers=2,
        chunk_size=2,
    )
    import_version(ImportSpec(images=str(tmp_path / "src")), settings.datasets, "v1", kind="train")
    (tmp_path / "src" / "x.png").write_bytes(b"")  # a half-written version: no version.json
    fs = s3fs.S3FileSystem()
    fs.put_file(str(tmp_path / "src" / "x.png"), f"{BUCKET}/datasets/v2/images/x.png")
    listing = DatasetRoot(settings.datasets).listing()
    assert (listing.complete, listing.incomplete) == (["v1"], ["v2"])

    result = materialize_version(settings, "v1")
    assert result.success
    assert fs.exists(f"{BUCKET}/storage/data/brightness/v1.parquet")
    assert not [p for p in fs.find(f"{BUCKET}/storage") if ".tmp" in p]
    values = load("data/colorfulness", "v1", settings).set_index("image_id").value
    for name, rgb in photos.items():
        assert values[f"{name}.png"] == pytest.approx(
            reference_values(rgb)["colorfulness"], rel=1e-9
        )

    report = fs.cat(f"{BUCKET}/storage/analysis/report/v1.html").decode()
    printed = capfd.readouterr()
    texts = [repr(event) for event in result.all_events] + [report, printed.out, printed.err]
    forbidden = [*SECRETS.values(), "Signature=", "X-Amz-Credential", "AWSAccessKeyId"]
    assert not [(word, i) for i, text in enumerate(texts) for word in forbidden if word in text]
    from qm_dagster import cli

    monkeypatch.setenv("QM_STORAGE", settings.storage)
    assert cli.main(["report", "v1"]) == 0
    signed = capfd.readouterr().out
    assert "Signature=" in signed and SECRETS["AWS_ACCESS_KEY_ID"] in signed  # asked for


def test_shared_dataset_through_s3(s3):
    src = shared("rafael-toy-voc10")
    settings = Settings(datasets=f"s3://{BUCKET}/d", storage=f"s3://{BUCKET}/s", workers=1)
    import_version(
        ImportSpec(
            images=str(src / "images"), format="voc", labels=str(src / "gts_vocpascal_format")
        ),
        settings.datasets,
        "toy",
    )
    assert materialize_version(settings, "toy").success
    assert len(load("data/sharpness", "toy", settings)) == 12
    assert len(load("dataset/annotations", "toy", settings)) == 12
