"""`nasax show`: the cells of a genotype as text, and drawn to PNG, SVG or .dot text."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from nasax.app.cli import main
from nasax.supernet import drawing
from nasax.supernet.genotypes import DARTS_V2, NB201_RESNET

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def test_text_lists_every_node_and_the_output(capsys):
    assert main(["show", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert "node 5 = skip_connect(c_{k-2}) + dil_conv_3x3(2)" in out
    assert "node 3 = skip_connect(2) + max_pool_3x3(c_{k-1})" in out  # the reduction cell
    assert out.count("output c_{k} = concat(2, 3, 4, 5)") == 2


def test_dot_text_has_one_edge_per_op_and_input():
    source = drawing.genotype_dot(DARTS_V2)
    assert source.startswith("digraph genotype {")
    for kind in ("normal", "reduce"):
        nodes, concat = DARTS_V2.cell(kind)
        op_edges = [line for line in source.splitlines() if f'-> "{kind}:' in line]
        assert len(op_edges) == sum(len(n) for n in nodes) + len(concat)
    # NAS-Bench-201 cells: `none` edges are drawn dashed, the arch string heads the text.
    assert "style=dashed" in drawing.genotype_dot(NB201_RESNET)
    assert drawing.genotype_text(NB201_RESNET).splitlines()[0] == NB201_RESNET.to_arch_string()


@needs_dot
def test_png_and_svg_pictures_of_darts_v2(tmp_path):
    png, svg = tmp_path / "cell.png", tmp_path / "cell.svg"
    assert main(["show", "DARTS_V2", "--out", str(png)]) == 0
    assert main(["show", "DARTS_V2", "--out", str(svg)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text")}
    assert {"normal cell", "reduce cell", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3"} <= texts


def test_without_graphviz_the_dot_text_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
    assert main(["show", "DARTS_V2", "--out", str(tmp_path / "cell.png")]) == 0
    assert not (tmp_path / "cell.png").exists()
    assert (tmp_path / "cell.dot").read_text() == drawing.genotype_dot(DARTS_V2)
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and err.count("\n") == 1


def test_an_unknown_picture_format_is_one_line_error(tmp_path, capsys):
    assert main(["show", "DARTS_V2", "--out", str(tmp_path / "cell.jpg")]) == 2
    assert "must be one of .dot, .png, .svg" in capsys.readouterr().err
