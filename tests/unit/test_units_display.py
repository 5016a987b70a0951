"""Measurements for people (:mod:`napari_decrappify._napari._units`, Qt-free): µm², µm³ (nm for
objects so small that µm would need an exponent), readable densities, area vs volume."""

import math

import pytest

from napari_decrappify._napari import _units as u


@pytest.mark.parametrize("unit, factor", [("nanometer", 1e-3), ("nm", 1e-3), ("micrometer", 1.0),
                                          ("µm", 1.0), ("millimeter", 1e3)])
def test_lengths_areas_volumes_in_um(unit, factor):
    assert u.display_unit(unit) == "µm"
    assert u.display_unit(unit, 2) == "µm²" and u.display_unit(unit, 3) == "µm³"
    assert u.to_display(2.0, unit) == pytest.approx(2.0 * factor)
    assert u.to_display(2.0, unit, 3) == pytest.approx(2.0 * factor**3)


def test_pixels_stay_pixels():
    assert u.um_per("pixel") is None and u.um_per(None) is None
    assert u.display_unit("pixel", 3) == "px³" and u.display_unit(None, 2) == "px²"
    assert u.to_display(7.0, "pixel", 3) == 7.0
    assert u.shown_unit("pixel", [1e-6], 3) == "px"


def test_small_objects_in_nm():
    # 40 nm vesicles in a nm layer: 33 510 nm³, not 3.35e-05 µm³
    vol = 4 / 3 * math.pi * 20.0**3  # nm³
    assert u.shown_unit("nanometer", [vol * 0.9, vol, vol * 1.2], 3) == "nm"
    assert u.display_unit("nanometer", 3, "nm") == "nm³"
    assert u.number(u.to_display(vol, "nanometer", 3, "nm")) == "33510"
    assert u.number(u.to_display(vol, "nanometer", 3)) == "3.35e-05"  # what µm would read
    # the same vesicles in a µm layer are still shown in nm
    assert u.shown_unit("micrometer", [vol * 1e-9], 3) == "nm"
    assert u.to_display(0.04, "micrometer", 1, "nm") == pytest.approx(40.0)
    # a 200 nm object: 0.004189 µm³ reads, 4.19e+06 nm³ would not; the median decides
    big = 4 / 3 * math.pi * 100.0**3
    assert u.shown_unit("nanometer", [big, big, vol], 3) == "µm"
    assert u.number(u.to_display(big, "nanometer", 3)) == "0.004189"
    # in 2-D the vesicle's 1 257 nm² is 0.001257 µm²: µm reads; a 20 nm particle is in nm
    assert u.shown_unit("nanometer", [math.pi * 20.0**2], 2) == "µm"
    assert u.shown_unit("nanometer", [math.pi * 10.0**2], 2) == "nm"
    assert u.shown_unit("micrometer", [50.0], 2) == "µm"
    assert u.shown_unit("nanometer", [], 3) == "µm"


def test_size_word_area_vs_volume():
    assert u.size_word(2) == "area" and u.size_word(3) == "volume"


def test_densities_are_per_um_with_readable_numbers():
    # 5.8e-08 per nm³ = 58 per µm³
    assert u.density_text(5.8e-08, "nanometer", 3) == "58 per µm³"
    assert "1/" not in u.density_text(5.8e-08, "nanometer", 3)
    # 3.2e-08 per nm² = 0.032 per µm² -> 3.2 per 100 µm²
    assert u.density_text(3.2e-08, "nanometer", 2) == "3.2 per 100 µm²"
    # 1e-12 per nm³ = 0.001 per µm³ -> 1 per 1 000 µm³
    assert u.density_text(1e-12, "nanometer", 3) == "1 per 1 000 µm³"
    assert u.density_text(0.5, "pixel", 2) == "0.5 per px²"
    assert u.density_text(float("nan"), "nm", 2) == "n/a"


def test_numbers_without_exponents_for_everyday_magnitudes():
    assert u.number(3) == "3" and u.number(0.1234567) == "0.1235"
    assert u.number(12345.6) == "12346" and u.number(2.5e7) == "2.5e+07"
