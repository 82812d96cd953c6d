"""Reading run tables: columns, failed runs, and one-line errors for bad input."""
import numpy as np
import pytest

from research.scaling import RunTable, RunTableError, read_runs_csv
from research.scaling.run_table import ExcludedRow


def write(tmp_path, text: str) -> str:
    path = tmp_path / "runs.csv"
    path.write_text(text)
    return str(path)


def test_reads_columns_and_leaves_out_failed_runs(tmp_path):
    path = write(tmp_path, "N, D ,loss,status,run,C\n"
                           "1e8,2e9,3.1,ok,a,1.2e18\n"
                           "1e8,4e9,3.0,ok,a,2.4e18\n"
                           "2e8,2e9,9.9,failed,b,2.4e18\n"
                           "2e8,2e9,nan,ok,b,2.4e18\n"
                           "4e8,1e9,inf,ok,c,2.4e18\n"
                           "4e8,1e9,2.95,OK,c,2.4e18\n")
    table = read_runs_csv(path)
    assert len(table) == 3
    np.testing.assert_array_equal(table.N, [1e8, 1e8, 4e8])
    np.testing.assert_array_equal(table.loss, [3.1, 3.0, 2.95])
    assert table.run.tolist() == ["a", "a", "c"]
    np.testing.assert_array_equal(table.budget, [1.2e18, 2.4e18, 2.4e18])
    np.testing.assert_allclose(table.compute, 6 * table.N * table.D)
    # Reported by CSV line (header = 1), never counted as a zero loss.
    assert [(row.line, row.reason) for row in table.excluded] == [
        (4, "status='failed'"), (5, "loss=nan"), (6, "loss=inf")]


def test_optional_columns_absent(tmp_path):
    table = read_runs_csv(write(tmp_path, "N,D,loss\n1e8,2e9,3.1\n2e8,2e9,3.0\n"))
    assert table.run is None and table.budget is None and not table.excluded


@pytest.mark.parametrize("text,message", [
    ("N,tokens,loss\n1e8,2e9,3.1\n", r"missing column\(s\) D \(found N, tokens, loss\)"),
    ("N,D,loss\n1e8,-2e9,3.1\n", r"runs.csv:2: D='-2e9' must be a positive number"),
    ("N,D,loss\n0,2e9,3.1\n", r"runs.csv:2: N='0' must be a positive number"),
    ("N,D,loss\n1e8,2e9,0\n", r"runs.csv:2: loss='0' must be a positive number"),
    ("N,D,loss\n1e8,2e9,3.1\n1e8,abc,3.1\n", r"runs.csv:3: D='abc' is not a number"),
    ("N,D,loss,status\n1e8,2e9,3.1,diverged\n", r"no finished runs \(1 row\(s\) failed or diverged\)"),
    # a sweep's runs.csv whose rows all finished on the early plateau: it said "failed or diverged"
    ("N,D,loss,status\n1e8,2e9,3.1,plateau\n1e8,3e9,3.0,plateau\n1e8,2e9,3.1,failed\n",
     r"no finished runs \(1 row\(s\) failed or diverged, 2 row\(s\) on the early plateau \(status 'plateau'; "
     r"rerun the sweep with --config.fit.plateau_rule=False to fit them\)\)"),
    # C in PF-days (1.2e18 FLOPs = 1.39e-2 PF-days): Approaches 1 and 2 put D_opt at 2e-11 tokens.
    ("N,D,loss,C\n1e8,2e9,3.1,1.2e18\n1e8,4e9,3.0,0.0278\n",
     r"/runs.csv:3: C='0.0278' is 1.16e-20 x 6\*N\*D = 2.4e\+18; C must be the run's budget in FLOPs, near 6 N D "
     r"\(PF-days x 8.64e19\), or drop the C column to group runs by 6 N D\.$"),
    ("N,D,loss,C\n1e8,2e9,3.1,1.3e19\n", r"/runs.csv:2: C='1.3e19' is 10.8 x 6\*N\*D"),
])
def test_bad_input_is_one_clear_line(tmp_path, text, message):
    with pytest.raises(RunTableError, match=message) as error:
        read_runs_csv(write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(RunTableError, match="does not exist"):
        read_runs_csv(str(tmp_path / "nope.csv"))


def test_in_memory_tables():
    table = RunTable.from_arrays([1e8, 2e8, 4e8], [1e9, 1e9, 1e9], [3.0, np.nan, 2.8])
    assert len(table) == 2 and table.excluded[0].reason == "run 1: loss=nan"
    with pytest.raises(RunTableError, match="N=-1.0 in run 0 is not a positive finite number"):
        RunTable(np.array([-1.0]), np.array([1e9]), np.array([3.0]))
    with pytest.raises(RunTableError, match="needs at least 5 finished runs, the table has 2"):
        table.require(5, "Approach 3")


def test_seeds_of_one_design_point_merge_into_one_row():
    """Rows with equal N, D, budget and FLOPs and distinct seeds become one at the geometric mean
    loss, with the first row's run id, in order of first appearance; a different D or budget is
    another point; without seeds, or with a seed repeated, rows are not replicates."""
    table = RunTable(np.array([1e8, 2e8, 1e8, 1e8, 2e8]), np.array([1e9, 1e9, 1e9, 2e9, 1e9]),
                     np.array([3.0, 2.9, 3.3, 2.8, 2.7]), run=np.array(["a", "b", "a-seed1", "c", "b-seed1"]),
                     budget=np.array([6e17, 1.2e18, 6e17, 1.2e18, 1.2e18]), seed=np.array(["0", "0", "1", "0", "1"]),
                     excluded=(ExcludedRow(7, "status='failed'"),))
    merged = table.merge_replicates()
    np.testing.assert_array_equal(merged.N, [1e8, 2e8, 1e8])
    np.testing.assert_array_equal(merged.D, [1e9, 1e9, 2e9])
    np.testing.assert_allclose(merged.loss, [np.sqrt(3.0 * 3.3), np.sqrt(2.9 * 2.7), 2.8], rtol=1e-15)
    assert merged.run.tolist() == ["a", "b", "c"] and merged.budget.tolist() == [6e17, 1.2e18, 1.2e18]
    assert merged.excluded == table.excluded
    assert merged.seed.tolist() == ["0", "0", "0"]
    pair = dict(N=np.array([1e8, 1e8]), D=np.array([1e9, 1e9]), loss=np.array([3.0, 3.1]))
    assert len(RunTable(**pair, budget=np.array([6e17, 1e18]), seed=np.array(["0", "1"])).merge_replicates()) == 2
    for seed in (None, np.array(["0", "0"])):  # two curves' checkpoints, or two learning rates: not seeds
        unmerged = RunTable(**pair, seed=seed)
        assert unmerged.merge_replicates() is unmerged


def test_seed_column_is_read(tmp_path):
    table = read_runs_csv(write(tmp_path, "N,D,loss,seed\n1e8,1e9,3.0,0\n1e8,1e9,3.3,1\n2e8,1e9,2.9,0\n"))
    assert table.seed.tolist() == ["0", "1", "0"] and len(table.merge_replicates()) == 2
    assert read_runs_csv(write(tmp_path, "N,D,loss,seed\n1e8,1e9,3.0,0\n1e8,1e9,3.3,\n")).seed is None


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with U+FEFF: it was read into the first name, "missing column(s) N"."""
    path = tmp_path / "runs.csv"
    path.write_text("N,D,loss\n1e8,2e9,3.1\n2e8,2e9,3.0\n", encoding="utf-8-sig")
    np.testing.assert_array_equal(read_runs_csv(str(path)).N, [1e8, 2e8])


def test_lines_are_counted_past_blank_lines_and_multi_line_fields(tmp_path):
    """DictReader skips blank lines, which enumerate(rows) did not count: every line named after
    one was too small. A row spanning lines (a quoted field with a newline) is named by its last."""
    text = ("N,D,loss,status\n\n1e8,2e9,3.1,ok\n\n\n1e8,2e9,nan,ok\n"
            '2e8,2e9,3.0,"failed:\nout of memory"\n\n2e8,4e9,2.9,preempted\n')
    table = read_runs_csv(write(tmp_path, text))
    assert [(row.line, row.reason) for row in table.excluded] == [
        (6, "loss=nan"), (8, "status='failed:\\nout of memory'"), (10, "status='preempted'")]
    with pytest.raises(RunTableError, match=r"runs.csv:5: D='x' is not a number"):
        read_runs_csv(write(tmp_path, "N,D,loss\n1e8,2e9,3.1\n\n\n1e8,x,3.1\n"))
