"""The student edition's tools without a build: tools/student_check.py finds solution text (and passes a clean page),
tools/student_edition.py removes gated solutions, puts glue values back and drops the labs' solutions."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
import student_check as sc  # noqa: E402
import student_edition as se  # noqa: E402

DERIVATION = "A derivation sentence that only the solution has."
SECRET = "secret_velocity = (x1 - (1 - sigma_min) * x) / sigma_t"


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(True)}


def _code(text, outputs=()):
    return {"cell_type": "code", "metadata": {}, "outputs": list(outputs), "source": text, "execution_count": None}


def _notebook():
    return {
        "cells": [
            _md("# A chapter\n\nThe chapter's text, long enough to be a candidate line of text.\n"),
            _code("shared_line_of_code = torch.zeros(3, dtype=torch.float64)\n"),
            _md("````{exercise} A thing ★★\n:label: ex-a-thing\n\nWrite `f`.\n````\n"),
            _md("```{solution-start} ex-a-thing\n:class: dropdown\n```\n\n" + DERIVATION + "\n"),
            _code(f"{SECRET}\nshared_line_of_code = torch.zeros(3, dtype=torch.float64)\nx = 1\n"),
            _md("```{solution-end}\n```\n"),
            _md("## After the exercises\n"),
        ],
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _highlighted(line):
    """A code line as Pygments writes it: one span per token, entities escaped."""
    spans = "".join(f'<span class="n">{tok}</span> ' for tok in line.replace("(", "&#40;").split())
    return f'<div class="highlight"><pre>{spans}</pre></div>'


def test_solution_strings_are_the_long_solution_lines_not_shared_with_the_chapter(tmp_path):
    path = tmp_path / "ch.ipynb"
    path.write_text(json.dumps(_notebook()))
    strings = sc.solution_strings([path])
    assert SECRET in strings
    assert DERIVATION in strings
    assert not any("shared_line_of_code" in s for s in strings)  # also outside the solution: proves nothing
    assert not any("x = 1" == s for s in strings)  # too short to be distinctive


def test_the_search_finds_a_planted_solution_and_passes_a_clean_page():
    strings = {SECRET}
    clean = "<html><body><div class='exercise admonition'><p>Write f.</p></div></body></html>"
    planted = f"<html><body><p>Some text</p>{_highlighted(SECRET)}</body></html>"
    assert sc.find_solution_text({"clean.html": clean}, strings) == []
    failures = sc.find_solution_text({"clean.html": clean, "ch.html": planted}, strings)
    assert len(failures) == 1 and failures[0].startswith("ch.html: solution text")


@pytest.mark.parametrize(
    "page, what",
    [
        ('<div class="solution dropdown admonition" id="s1"><p>...</p></div>', "solution class"),
        ("<div class='admonition solution'>x</div>", "solution class"),
        ('<p class="admonition-title">Solution to<a href="#ex"> Exercise 3</a></p>', "Solution to Exercise"),
        ('<a href="../labs/solutions/lab1.html">lab 1</a>', "labs/solutions"),
    ],
)
def test_the_search_finds_solution_boxes_titles_and_links_to_the_labs_solutions(page, what):
    (failure,) = sc.find_solution_text({"p.html": f"<html><body>{page}</body></html>"}, set())
    assert what in failure


def test_a_word_solution_in_another_class_or_in_prose_is_not_a_finding():
    page = '<div class="highlight-solutionish"><p>The solution of the ODE is unique.</p></div>'
    assert sc.find_solution_text({"p.html": page}, set()) == []


def test_strip_solutions_removes_the_gated_cells_and_only_them():
    nb = _notebook()
    stripped, removed = se.strip_solutions(nb)
    assert removed == 1 and len(stripped["cells"]) == len(nb["cells"]) - 3
    text = json.dumps(stripped)
    assert SECRET not in text and "solution-start" not in text and "solution-end" not in text
    assert "{exercise}" in text and "After the exercises" in text


def test_strip_solutions_rejects_an_unclosed_solution():
    nb = _notebook()
    del nb["cells"][5]  # the solution-end cell
    with pytest.raises(ValueError, match="without its solution-end"):
        se.strip_solutions(nb)


def test_restore_glue_puts_the_mime_prefix_back_for_myst_nb():
    glue = {
        "ratio": {
            "output_type": "display_data",
            "metadata": {"scrapbook": {"name": "ratio", "mime_prefix": "application/papermill.record/"}},
            "data": {"text/plain": "0.96"},
        }
    }
    nb = se.restore_glue(_notebook(), glue)
    cell = nb["cells"][-1]
    assert cell["metadata"]["tags"] == ["remove-cell"]
    assert cell["outputs"][0]["data"] == {"application/papermill.record/text/plain": "0.96"}
    assert glue["ratio"]["data"] == {"text/plain": "0.96"}  # the input is not changed


def test_the_student_toc_drops_the_labs_solutions_and_the_config_hides_solutions():
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [{"caption": "Labs", "chapters": [{"file": "labs/lab1"}, {"file": "labs/solutions/lab1"}]}],
    }
    assert se.toc_files(se.drop_lab_solutions(toc)) == ["book/intro", "labs/lab1"]
    config = se.student_config(
        {"title": "T", "execute": {"execute_notebooks": "force"}, "sphinx": {"config": {"html_static_path": ["a"]}}},
        Path("/repo"),
    )
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["sphinx"]["config"]["hide_solutions"] is True
    assert config["sphinx"]["config"]["html_static_path"] == ["/repo/a"]
    assert not config["launch_buttons"]["colab_url"] and not config["launch_buttons"]["binderhub_url"]
