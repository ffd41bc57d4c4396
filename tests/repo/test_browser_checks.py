"""The page checks of tools/browser_test.py that need no browser: image resolution, raw TeX, check output."""

import base64
import importlib.util
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

SPEC = importlib.util.spec_from_file_location("browser_test", Path(__file__).parents[2] / "tools" / "browser_test.py")
bt = importlib.util.module_from_spec(SPEC)
sys.modules["browser_test"] = bt  # dataclasses look their module up
SPEC.loader.exec_module(bt)


def _figure_bytes(fmt: str, width_in: float, dpi: float) -> bytes:
    fig = plt.figure(figsize=(width_in, 2))
    fig.add_subplot().plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def test_png_dpi_reads_matplotlibs_phys_chunk():
    assert bt.png_dpi(_figure_bytes("png", 3, 150)) == pytest.approx(150, abs=0.1)
    assert bt.png_dpi(b"not a png") is None


def test_px_per_point_of_a_png_shrunk_into_the_column():
    # a 9-inch figure at 200 dpi (1800 px) shown 690 px wide: 200/72 * 690/1800 = 1.065 px per point
    data = _figure_bytes("png", 9, 200)
    density, source = bt.px_per_point({"natural": 1800, "shown": 690, "dpi": None}, data)
    assert source == "pHYs" and density == pytest.approx(690 / (72 * 9), rel=1e-3)
    # a 14-inch figure in the same column: 690 / (72 * 14) = 0.68, too small
    density, _ = bt.px_per_point({"natural": 2800, "shown": 690, "dpi": None}, _figure_bytes("png", 14, 200))
    assert density == pytest.approx(690 / (72 * 14), rel=1e-3) and density < bt.MIN_PX_PER_POINT


def test_px_per_point_of_an_svg_and_of_a_recorded_dpi():
    svg = _figure_bytes("svg", 6, 72)  # width="432pt"
    assert bt.svg_width_points(svg) == pytest.approx(432)
    density, source = bt.px_per_point({"natural": 576, "shown": 576, "dpi": None}, svg)
    assert source == "svg" and density == pytest.approx(576 / 432)
    no_phys = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00IEND"
    density, source = bt.px_per_point({"natural": 800, "shown": 690, "dpi": "100"}, no_phys)
    assert source == "data-dpi" and density == pytest.approx(100 / 72 * 690 / 800)
    assert bt.px_per_point({"natural": 800, "shown": 690, "dpi": None}, no_phys) == (None, "no dpi")


def test_image_bytes_decodes_data_uris():
    assert bt.image_bytes("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("the field $u_t$ moves points", True),
        ("a rendered equation and \\mathcal{N} left over", True),
        ("plain prose with x_t and 5 % of it", False),
    ],
)
def test_raw_tex_detection(text, raw):
    report = bt.Report()
    bt.check_raw_tex(text, "p.html", report)
    assert bool(report.problems) == raw


@pytest.mark.parametrize(
    ("output", "visible_check"),
    [
        ("OK: the two losses agree", True),
        ("loss 0.12\nOK\n", True),
        ("12 checks passed", True),
        ("all 3 checks passed.\n", True),
        ("BOOK: 3 pages", False),
        ("mean error 0.031 (checks passed later)", False),
    ],
)
def test_check_output_detection(output, visible_check):
    report = bt.Report()
    bt.check_outputs([{"text": output, "where": "h"}], "p.html", report)
    assert bool(report.problems) == visible_check


def test_wide_equation_is_reported():
    report = bt.Report()
    eqs = [
        {"tex": "a = b", "width": 300.0, "box": 690.0, "where": "h"},
        {"tex": "x_t = " + "t x_1 + " * 20, "width": 900.0, "box": 690.0, "where": "h"},
    ]
    bt.check_equations(eqs, "p.html", report)
    assert len(report.problems) == 1 and "900 px wide in a 690 px box" in report.problems[0]
    assert report.equations["p.html"][0]["width"] == 900


def test_layout_overflow_is_reported_at_both_widths():
    report = bt.Report()
    state = {
        "scrollingCode": [{"over": 40, "where": "h"}],
        "wideOutputs": [],
        "wideTables": [{"over": 12, "where": "t"}],
        "equations": [
            {"tex": "a = b", "width": 300.0, "box": 368.0, "where": "h"},
            {"tex": "x", "width": 520.0, "box": 368.0, "where": "e"},
        ],
    }
    bt.check_layout(state, "p.html", report)
    assert len(report.problems) == 2 and "a code cell is 40 px wider" in report.problems[0]
    assert "a table is 12 px wider" in report.problems[1]
    bt.check_narrow(state, "p.html", report)
    assert len(report.problems) == 3 and "cut at 400 px: 520 px in a 368 px box" in report.problems[2]
    assert len(report.warnings) == 1  # a scrolling table on a phone is a warning
    quiet = bt.Report()
    bt.check_layout({"scrollingCode": [], "wideOutputs": [], "wideTables": []}, "p.html", quiet)
    assert not quiet.problems
