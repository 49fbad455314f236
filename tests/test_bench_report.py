"""`make bench`'s report: the README table comes from the rows of a run, and nothing else."""

from benchmarks.run import main, markdown_table, readme_table, update_readme

ROWS = [
    {"name": "drift: |score - Evidently score|", "value": 1.6e-05},
    {"name": "drift: check", "value": 1.6, "unit": "s", "target": "<= 10 s", "met": True},
    {"name": "demo: wall time", "value": 200, "unit": "s", "target": "<= 180 s", "met": False},
    {"name": "prefect: per task", "value": 14.8, "unit": "ms", "headline": True},
]


def test_numpy_verdicts_count_as_met_or_not():
    import numpy as np

    rows = [{**ROWS[1], "met": np.bool_(True)}, {**ROWS[2], "met": np.bool_(False)}]
    table = readme_table(rows, "2026-11-24")
    assert "1 of 2 targets met" in table and "**no**" in table


def test_the_readme_table_lists_every_target_then_the_headlines():
    table = readme_table(ROWS, "2026-11-24")
    assert "1 of 2 targets met" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")][2:]
    assert [line.split(" | ")[0] for line in lines] == [
        "| drift: check",
        "| demo: wall time",
        "| prefect: per task",
    ]
    assert "**no**" in lines[1] and "yes" in lines[0]
    assert "|score" not in table


def test_a_pipe_inside_a_cell_does_not_split_the_row():
    line = markdown_table(ROWS[:1]).splitlines()[-1]
    assert line.count(" | ") == 5 and "\\|score - Evidently score\\|" in line


def test_the_readme_is_rewritten_only_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\nrest\n")
    assert update_readme("new table", readme)
    assert readme.read_text() == (
        "intro\n<!-- bench:begin -->\nnew table\n<!-- bench:end -->\nrest\n"
    )
    assert update_readme("newer", readme)
    assert "new table" not in readme.read_text() and "newer" in readme.read_text()


def test_a_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert not update_readme("table", readme)
    assert readme.read_text() == "no markers here\n"


def test_an_unknown_benchmark_name_is_refused(capsys):
    assert main(["no_such_benchmark"]) == 2
    assert "unknown benchmark(s) no_such_benchmark" in capsys.readouterr().out
