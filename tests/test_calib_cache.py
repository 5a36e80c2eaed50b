"""The TensorRT calibration cache: exact text format, hand-computed scales, round trip."""

from __future__ import annotations

import struct

import pytest

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.tensorrt.calib_cache import CalibrationCache, decode_scale, encode_scale, scale_from_range


@pytest.mark.parametrize(
    ("scale", "hex_"),
    [
        # 1/127 = 0.007874016: sign 0, exponent 120 (0x78 → 0x3c0 after the shift), mantissa 0x010204
        (1.0 / 127, "3c010204"),
        (1.0, "3f800000"),
        (0.5, "3f000000"),
        (2.0, "40000000"),
        (0.125, "3e000000"),
        (0.0, "00000000"),
    ],
)
def test_scales_are_big_endian_ieee754_float32_hex(scale, hex_):
    assert encode_scale(scale) == hex_
    assert decode_scale(hex_) == pytest.approx(scale, rel=1e-7)


def test_scale_is_absmax_over_127_whatever_the_sign():
    assert scale_from_range(-0.5, 1.0) == pytest.approx(1.0 / 127)
    assert scale_from_range(-254.0, 3.0) == pytest.approx(2.0)
    assert encode_scale(scale_from_range(0.0, 1.0)) == "3c010204"  # a sigmoid output in a real TensorRT cache


def test_written_cache_matches_the_published_format_line_for_line(tmp_path):
    ranges = {"images": (0.0, 1.0), "/model.0/conv/Conv_output_0": (-12.7, 6.0), "output0": (-1.0, 254.0)}
    path = tmp_path / "entropy.cache"
    CalibrationCache.from_ranges(ranges, "entropy", version=100300).write(path)
    assert path.read_text() == (
        "TRT-100300-EntropyCalibration2\n"
        "images: 3c010204\n"
        "/model.0/conv/Conv_output_0: 3dcccccd\n"  # 12.7/127 = 0.1 → 0x3dcccccd
        "output0: 40000000\n"
    )
    assert struct.unpack(">f", bytes.fromhex("3dcccccd"))[0] == pytest.approx(0.1)


def test_minmax_header_and_round_trip(tmp_path):
    path = tmp_path / "minmax.cache"
    CalibrationCache.from_ranges({"a:0": (-3.0, 2.0), "b": (0.0, 0.25)}, "minmax", version=8601).write(path)
    back = CalibrationCache.read(path)
    assert path.read_text().splitlines()[0] == "TRT-8601-MinMaxCalibration"
    assert (back.version, back.algorithm) == (8601, "MinMaxCalibration")
    assert back.scales["a:0"] == pytest.approx(3.0 / 127, rel=1e-7)
    assert back.dynamic_range("b") == pytest.approx((-0.25, 0.25), rel=1e-6)


def test_a_cache_written_by_tensorrt_parses():
    # as TensorRT 10.3 writes it (tensor names may contain colons)
    text = "TRT-100300-EntropyCalibration2\ninput_1:0: 3c010a14\nconv1/convolution:0: 3d0b7086\n"
    cache = CalibrationCache.parse(text)
    assert cache.algorithm == "EntropyCalibration2" and cache.version == 100300
    assert set(cache.scales) == {"input_1:0", "conv1/convolution:0"}
    assert CalibrationCache.parse(cache.dumps()).scales == cache.scales


def test_a_file_that_is_not_a_cache_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "x.cache"
    bad.write_text("images 1.0\n")
    with pytest.raises(PlanforgeError, match=r"x.cache: not a TensorRT calibration cache"):
        CalibrationCache.read(bad)
    bad.write_text("TRT-100300-MinMaxCalibration\nimages: 1.0\n")
    with pytest.raises(PlanforgeError, match=r"x.cache:2: expected"):
        CalibrationCache.read(bad)


def test_zero_and_non_finite_ranges_are_left_out_of_the_cache_as_tensorrt_does(tmp_path):
    # dfine-demo's /inner/model/decoder/Constant_52_output_0 is a Clip bound 0.0: calibrated range [0, 0]
    ranges = {
        "images": (0.0, 1.0),
        "/inner/model/decoder/Constant_52_output_0": (0.0, 0.0),
        "nan_tensor": (float("nan"), 1.0),
        "inf_tensor": (-float("inf"), 0.0),
        "tiny": (0.0, 1e-45),  # absmax / 127 underflows float32 to 0
    }
    cache = CalibrationCache.from_ranges(ranges, "minmax")
    assert set(cache.scales) == {"images"}
    assert set(cache.left_out) == set(ranges) - {"images"}
    assert "zero" in cache.left_out["/inner/model/decoder/Constant_52_output_0"]
    path = tmp_path / "minmax.cache"
    cache.write(path)
    back = CalibrationCache.read(path)
    assert back.bad_scales() == {} and set(back.scales) == {"images"}
    for line in path.read_text().splitlines()[1:]:
        assert decode_scale(line.rsplit(": ", 1)[1]) > 0


def test_a_cache_with_a_zero_scale_is_never_written(tmp_path):
    cache = CalibrationCache("MinMaxCalibration", scales={"a": 0.5, "b": 0.0})
    assert cache.bad_scales() == {"b": 0.0}
    with pytest.raises(PlanforgeError, match=r"'b' has scale 0.0"):
        cache.write(tmp_path / "x.cache")
    assert not (tmp_path / "x.cache").exists()
