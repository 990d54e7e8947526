"""Repeats: `seeds` expand quantized cells once per seed; the base seed keeps today's keys and labels."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.errors import SuiteError
from harness.plan import plan_cells
from harness.suite import load_suite, resolve_cells

ROOT = Path(__file__).resolve().parents[2]

BASE = textwrap.dedent(
    """\
    name: s
    models: [smollm2-135m]
    calibration: {num_sequences: 4, seqlen: 64}
    methods:
      - name: none
      - {name: rtn, budgets: [2]}
      - {name: aqlm, budgets: [1]}
    """
)


def _cells(tmp_path: Path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return resolve_cells(load_suite(path), path)


def test_seeds_repeat_quantized_cells_and_keep_the_base_seed_cells(tmp_path):
    plain = {c.label: c for c in _cells(tmp_path, BASE)}
    repeated = _cells(tmp_path, BASE.replace("name: s\n", "name: s\nseeds: [0, 1, 2]\n"), "r.yaml")
    labels = [c.label for c in repeated]
    assert labels == ["smollm2-135m/none", "smollm2-135m/rtn/b2", "smollm2-135m/rtn/b2/s1", "smollm2-135m/rtn/b2/s2",
                      "smollm2-135m/aqlm/b1", "smollm2-135m/aqlm/b1/s1", "smollm2-135m/aqlm/b1/s2"]
    by_label = {c.label: c for c in repeated}
    for label, cell in plain.items():  # seed 0 (the suite's seed): the very same cells
        assert by_label[label].key == cell.key and by_label[label].seed == 0
    aqlm = [by_label[f"smollm2-135m/aqlm/b1{s}"] for s in ("", "/s1", "/s2")]
    assert [c.seed for c in aqlm] == [0, 1, 2] and [c.calibration.seed for c in aqlm] == [0, 1, 2]
    assert len({c.key for c in repeated}) == len(repeated)
    assert by_label["smollm2-135m/rtn/b2/s1"].calibration is None  # calibration-free: only the seed differs


def test_line_seeds_override_and_overlapping_lines_are_refused(tmp_path):
    text = textwrap.dedent(
        """\
        name: s
        seeds: [3, 4]
        models: [smollm2-135m]
        methods:
          - {name: rtn, budgets: [2], seeds: [0, 1, 2]}
          - {name: rtn, budgets: [4, 3, 2]}
          - {name: none}
        """
    )
    cells = _cells(tmp_path, text)
    labels = [c.label for c in cells]
    # the line's seeds win over the suite's; the suite's seeds (3, 4) apply to the second line;
    # the reference runs once, with the first seed when the suite's `seed` (0) is not among them
    assert labels == ["smollm2-135m/rtn/b2", "smollm2-135m/rtn/b2/s1", "smollm2-135m/rtn/b2/s2",
                      "smollm2-135m/rtn/b4/s3", "smollm2-135m/rtn/b4/s4", "smollm2-135m/rtn/b3/s3",
                      "smollm2-135m/rtn/b3/s4", "smollm2-135m/rtn/b2/s3", "smollm2-135m/rtn/b2/s4",
                      "smollm2-135m/none/s3"]
    # with suite seeds [0, 1] the second line's b2 cells (seeds 0 and 1) are the first line's: an error, not a merge
    with pytest.raises(SuiteError, match=r"field `methods\[1\]`: this line resolves to a cell that `methods\[0\]` already defines"):
        _cells(tmp_path, text.replace("seeds: [3, 4]", "seeds: [0, 1]"), "t.yaml")


def test_explicit_calibration_seed_stays_fixed(tmp_path):
    text = BASE.replace("calibration: {num_sequences: 4, seqlen: 64}", "calibration: {num_sequences: 4, seqlen: 64, seed: 7}")
    cells = _cells(tmp_path, text.replace("name: s\n", "name: s\nseed: 5\nseeds: [5, 6]\n"))
    aqlm = [c for c in cells if c.method == "aqlm"]
    assert [c.label for c in aqlm] == ["smollm2-135m/aqlm/b1", "smollm2-135m/aqlm/b1/s6"]
    assert [c.seed for c in aqlm] == [5, 6] and [c.calibration.seed for c in aqlm] == [7, 7]
    assert aqlm[0].key != aqlm[1].key


@pytest.mark.parametrize(
    ("where", "value", "fragments"),
    [
        ("suite", "[]", ["`seeds`", "empty"]),
        ("suite", "[0, -1]", ["`seeds`", ">= 0", "[-1]"]),
        ("suite", "[0, 1, 1]", ["`seeds`", "listed twice"]),
        ("suite", "[a]", ["`seeds[0]`", "integer"]),
        ("line", "[]", ["methods[1].seeds", "empty"]),
        ("line", "[2, 2]", ["methods[1].seeds", "listed twice"]),
        ("reference", "[0, 1]", ["methods[0].seeds", "unquantized reference", "Remove `seeds`"]),
    ],
)
def test_bad_seeds_are_clear_errors(tmp_path, where, value, fragments):
    if where == "suite":
        text = BASE.replace("name: s\n", f"name: s\nseeds: {value}\n")
    elif where == "line":
        text = BASE.replace("{name: rtn, budgets: [2]}", f"{{name: rtn, budgets: [2], seeds: {value}}}")
    else:
        text = BASE.replace("- name: none", f"- {{name: none, seeds: {value}}}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    message = " ".join(str(exc.value).split())
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_quickstart_repeats_reuses_the_quickstart_cells():
    quick = {c.label: c for c in resolve_cells(load_suite(ROOT / "suites/quickstart.yaml"), ROOT / "suites/quickstart.yaml")}
    path = ROOT / "suites/quickstart_repeats.yaml"
    suite = load_suite(path)
    repeats = resolve_cells(suite, path)
    assert suite.output_dir == "results/quickstart"
    assert [c.label for c in repeats] == ["smollm2-135m/rtn/b2", "smollm2-135m/rtn/b2/s1", "smollm2-135m/rtn/b2/s2",
                                          "smollm2-135m/aqlm/b1", "smollm2-135m/aqlm/b1/s1", "smollm2-135m/aqlm/b1/s2",
                                          "smollm2-135m/crvq/b1", "smollm2-135m/crvq/b1/s1", "smollm2-135m/crvq/b1/s2"]
    quick_keys = {c.key for c in quick.values()}
    for cell in repeats:
        if cell.seed == 0:
            assert cell.key == quick[cell.label].key
        else:
            assert cell.key not in quick_keys
            base = quick[cell.label.rsplit("/", 1)[0]]
            assert cell.params == base.params and cell.evaluations == base.evaluations
            if cell.calibration is not None:  # aqlm, crvq: another calibration sample
                assert cell.calibration.seed == cell.seed != base.calibration.seed
                assert cell.calibration.model_copy(update={"seed": 0}) == base.calibration


def test_dry_run_plan_lists_the_repeats(tmp_path):
    cells = _cells(tmp_path, BASE.replace("name: s\n", "name: s\nseeds: [0, 1]\n"))
    plans = plan_cells(cells, profile="cpu")
    assert [p.cell.label for p in plans if p.cell.method == "aqlm"] == ["smollm2-135m/aqlm/b1", "smollm2-135m/aqlm/b1/s1"]
    a, b = (p for p in plans if p.cell.method == "aqlm")
    assert a.error is None and a.bits == b.bits and a.seconds == pytest.approx(b.seconds)
