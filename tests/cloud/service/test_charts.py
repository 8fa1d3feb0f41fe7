"""Server-rendered SVG charts: well-formed, escaped, points where the numbers put them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cloud.service import charts

NS = "{http://www.w3.org/2000/svg}"


def test_line_chart_places_points_by_their_values() -> None:
    svg = charts.line_chart("drift", "Drift <b>", {"v1": [(1000.0, 0.0), (2000.0, 1.0)], "v2": [(1500.0, 0.5)]},
                            "PSI", y_range=(0.0, 1.0), threshold=0.25)
    root = ET.fromstring(svg)  # well-formed XML, with the title escaped
    assert root.get("data-chart") == "drift" and "Drift <b>" in "".join(root.itertext())
    groups = {g.get("data-series"): g for g in root.iter(NS + "g") if g.get("data-series")}
    assert set(groups) == {"v1", "v2"}
    c1 = [(float(c.get("cx")), float(c.get("cy"))) for c in groups["v1"].iter(NS + "circle")]
    bottom, top = charts.HEIGHT - charts.MARGIN_B, charts.MARGIN_T
    assert c1[0] == (charts.MARGIN_L, bottom) and c1[1] == (charts.WIDTH - charts.MARGIN_R, top)
    (c2,) = [(float(c.get("cx")), float(c.get("cy"))) for c in groups["v2"].iter(NS + "circle")]
    assert abs(c2[0] - (charts.MARGIN_L + charts.WIDTH - charts.MARGIN_R) / 2) < 0.1 and abs(c2[1] - (bottom + top) / 2) < 0.1
    assert len([x for x in root.iter(NS + "line") if x.get("class") == "threshold"]) == 1


def test_step_chart_holds_each_value_until_the_next_point() -> None:
    svg = charts.line_chart("r", "stages", {"v2": [(0.0, 5.0), (10.0, 25.0), (20.0, 100.0)]}, y_range=(0, 100), step=True)
    (poly,) = ET.fromstring(svg).iter(NS + "polyline")
    ys = [float(p.split(",")[1]) for p in poly.get("points").split()]
    assert len(ys) == 5 and ys[0] == ys[1] and ys[2] == ys[3]  # flat, then a vertical jump at each decision


def test_bar_chart_and_empty_charts() -> None:
    root = ET.fromstring(charts.bar_chart("acc", "Accuracy", [("v1", 50.0), ("v2", 100.0)], y_range=(0, 100),
                                          value_format="{:.1f}%"))
    rects = {g.get("data-series"): g.find(NS + "rect") for g in root.iter(NS + "g") if g.get("data-series")}
    assert float(rects["v2"].get("height")) == 2 * float(rects["v1"].get("height"))
    assert "100.0%" in "".join(root.itertext())
    empty = ET.fromstring(charts.line_chart("x", "nothing", {}))
    assert "no data yet" in "".join(empty.itertext())
    assert "<script" not in charts.line_chart("x", "<script>alert(1)</script>", {"<script>": [(0.0, 1.0)]})
