"""The core's units for people (:mod:`napari_decrappify.units`): area in 2-D, volume in 3-D,
µm² / µm³ (nm for tiny objects), densities per µm² / µm³ with readable numbers, ASCII column
names, and the measurements CSV and summary that use them (the Segment dock uses the same)."""

import csv
import math

import numpy as np
import pytest

from napari_decrappify import segment as S
from napari_decrappify import units as u


def test_the_dock_uses_the_core_helpers():
    from napari_decrappify._napari import _units

    for name in u.__all__:
        assert getattr(_units, name) is getattr(u, name), name


@pytest.mark.parametrize("ndim, word, power", [(2, "area", "²"), (3, "volume", "³")])
def test_area_in_2d_volume_in_3d(ndim, word, power):
    assert u.size_word(ndim) == word
    assert u.display_unit("nanometer", ndim) == f"µm{power}"
    assert u.column_unit("nanometer", ndim) == f"um{ndim}"
    assert u.column_unit("nanometer", ndim, "nm") == f"nm{ndim}"
    assert u.density_column("nm", ndim) == f"density_per_um{ndim}"


def test_column_units_are_ascii():
    assert u.column_unit("µm") == "um" and u.column_unit("micrometre", 3) == "um3"
    assert u.column_unit("pixel", 2) == "px2" and u.column_unit(None) == "px"
    assert u.density_column("pixel", 3) == "density_per_px3"
    assert all(u.column_unit(x, 3).isascii() for x in ("µm", "μm", "Å", "inch"))


def test_unknown_lengths_keep_their_name_pixels_are_px():
    # a length this module does not know is not converted nor called pixels
    assert u.um_per("inch") is None and u.shown_unit("inch", [1.0], 2) == "inch"
    assert u.display_unit("inch", 2) == "inch²" and u.to_display(3.0, "inch", 2) == 3.0
    assert u.display_unit("pixels", 3) == "px³" and u.display_unit("", 1) == "px"
    # British spellings are lengths
    assert u.um_per("nanometre") == 1e-3 and u.um_per("micrometre") == 1.0


def test_conversion_keeps_every_digit():
    # nm -> µm divides by 1000: x 0.001 would read 23456.975000000002
    assert repr(u.to_display(23_456_975.0, "nanometer")) == "23456.975"
    assert u.to_display(38_025.0, "nm", 2) == 0.038025
    assert u.to_display(2.0, "micrometer", 3, "nm") == pytest.approx(2e9)


def test_densities_per_um_with_readable_numbers():
    assert u.per_um(5.8e-08, "nanometer", 3) == pytest.approx(58.0)
    assert u.per_um(3.2e-08, "nm", 2) == pytest.approx(0.032)
    assert u.per_um(0.5, "pixel", 2) == 0.5
    assert u.density_text(5.8e-08, "nanometer", 3) == "58 per µm³"
    assert u.density_text(8.14e-05, "nm", 3) == "81 400 per µm³"  # not 8.14e+04
    assert u.density_text(3.2e-08, "nm", 2) == "3.2 per 100 µm²"


def _balls(radius_px, pixel_nm):
    """Four balls of ``radius_px`` voxels in a (z, y, x) stack of ``pixel_nm`` voxels."""
    n = 6 * radius_px
    zz, yy, xx = np.mgrid[:n, :2 * n, :2 * n]
    inst = np.zeros(zz.shape, np.int32)
    for i, (cy, cx) in enumerate([(n // 2, n // 2), (n // 2, 3 * n // 2), (3 * n // 2, n // 2),
                                  (3 * n // 2, 3 * n // 2)], 1):
        inst[(zz - n // 2) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2] = i
    return S.measure(inst, None, ["background", "vesicle"], pixel_size=(pixel_nm,) * 3,
                     unit="nanometer")


def test_3d_measurements_csv_has_volumes_and_densities_per_um3(tmp_path):
    # 40 nm vesicles (5 voxels of 4 nm): a volume in nm³, not 3.3e-05 "area" in µm³
    m = _balls(5, 4.0)
    assert m.spatial_ndim == 3 and m.length_unit == "nm"
    with open(m.to_csv(tmp_path / "v.csv")) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    assert header == ["label", "class_id", "class", "volume_nm3", "voxels", "centroid_z_nm",
                      "centroid_y_nm", "centroid_x_nm", "equivalent_diameter_nm"]
    assert not any("area" in h for h in header)
    raw = m.rows[0]
    assert float(rows[0]["volume_nm3"]) == raw["area"] == raw["area_px"] * 64
    assert 30_000 < float(rows[0]["volume_nm3"]) < 36_000  # ~ 4/3 pi 20³ = 33 510 nm³
    assert float(rows[0]["equivalent_diameter_nm"]) == pytest.approx(40, rel=0.05)
    with open(m.summary_csv(tmp_path / "s.csv")) as f:
        reader = csv.DictReader(f)
        (summ,) = list(reader)
    assert reader.fieldnames == ["class_id", "class", "count", "density_per_um3",
                                 "mean_volume_nm3", "mean_equivalent_diameter_nm"]
    field_um3 = np.prod(np.array([30, 60, 60]) * 4e-3)  # the stack is 30 x 60 x 60 voxels
    assert float(summ["density_per_um3"]) == pytest.approx(4 / field_um3)  # 579 per µm³
    (line,) = m.summary_lines()
    assert line.startswith("vesicle: 4 objects, 579 per µm³, mean volume ")
    assert line.endswith(" nm") and "nm³" in line and "1/" not in line and "area" not in line

    # larger objects in the same nm layer are read in µm³
    m = _balls(5, 40.0)  # 400 nm balls: 0.03 µm³
    assert m.length_unit == "µm"
    columns, rows = m.table()
    assert "volume_um3" in columns and "centroid_x_um" in columns
    assert rows[0]["volume_um3"] == pytest.approx(m.rows[0]["area"] * 1e-9)
    assert m.summary_table()[0][3:5] == ["density_per_um3", "mean_volume_um3"]


def test_2d_measurements_csv_has_areas_per_um2(tmp_path):
    yy, xx = np.mgrid[:60, :80]
    inst = (((yy - 25) ** 2 + (xx - 40) ** 2) <= 100).astype(np.int32)
    m = S.measure(inst, None, ["background", "nucleus"], pixel_size=(500.0, 500.0),
                  unit="nanometer")
    columns, rows = m.table()
    assert columns[3:5] == ["area_um2", "pixels"] and "centroid_y_um" in columns
    assert rows[0]["area_um2"] == pytest.approx(rows[0]["pixels"] * 0.25)
    assert rows[0]["equivalent_diameter_um"] == pytest.approx(
        2 * math.sqrt(rows[0]["area_um2"] / math.pi))
    columns, (summ,) = m.summary_table()
    assert columns[3:5] == ["density_per_um2", "mean_area_um2"]
    assert summ["density_per_um2"] == pytest.approx(1 / (30 * 40))
    assert m.summary_lines() == [
        f"nucleus: 1 object, 8.33 per 10 000 µm², mean area {u.number(summ['mean_area_um2'])} "
        f"µm², mean diameter {u.number(summ['mean_equivalent_diameter_um'])} µm"]


def test_no_objects_a_header_in_units_and_a_short_line(tmp_path):
    m = S.measure(np.zeros((4, 10, 10), np.int32), None, ["background", "vesicle"],
                  pixel_size=(40.0, 4.0, 4.0), unit="nm")
    assert m.to_csv(tmp_path / "e.csv").read_text().splitlines() == [
        "label,class_id,class,volume_um3,voxels,centroid_z_um,centroid_y_um,centroid_x_um,"
        "equivalent_diameter_um"]
    assert m.summary_lines() == ["vesicle: 0 objects"]
