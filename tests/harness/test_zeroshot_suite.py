"""The `evaluations.zero_shot` block of a suite: validation errors and cell keys."""
from __future__ import annotations

import sys
import textwrap

import pytest

from harness import cli
from harness.suite import load_suite, resolve_cells

BASE = textwrap.dedent(
    """\
    name: t
    models: [smollm2-135m]
    methods: [{name: rtn, budgets: [4]}]
    """
)


@pytest.mark.parametrize(("block", "fragments"), [
    ("{tasks: [piqa], num_fewshot: 5}", ["evaluations.zero_shot.num_fewshot", "0"]),
    ("{tasks: []}", ["evaluations.zero_shot.tasks", "at least 1"]),
    ("{tasks: [embedded_clze4]}", ["evaluations.zero_shot.tasks[0]", "unknown zero-shot task 'embedded_clze4'",
                                   "embedded_lastword, embedded_cloze4", "Did you mean embedded_cloze4"]),
    ("{tasks: [piqa], limit: 1.5}", ["evaluations.zero_shot.limit", "fraction below 1"]),
    ("{tasks: [piqa, piqa]}", ["evaluations.zero_shot.tasks", "listed twice"]),
    ("{tasks: [piqa], batch: 8}", ["evaluations.zero_shot.batch", "unknown key"]),
])
def test_bad_zero_shot_block_is_a_clear_error(block, fragments, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(BASE + f"evaluations: {{zero_shot: {block}}}\n")
    monkeypatch.setattr(sys, "argv", ["harness", "validate", str(path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_zero_shot_changes_the_key_only_when_present(tmp_path) -> None:
    def key(text: str) -> str:
        path = tmp_path / "k.yaml"
        path.write_text(text)
        return resolve_cells(load_suite(path), path)[0].key

    plain = key(BASE)
    assert key(BASE + "evaluations: {perplexity: {datasets: [embedded]}, zero_shot: null}\n") == plain
    with_zs = key(BASE + "evaluations: {zero_shot: {tasks: [embedded_cloze4]}}\n")
    assert with_zs != plain
    assert key(BASE + "evaluations: {zero_shot: {tasks: [embedded_cloze4], limit: 10}}\n") != with_zs


def test_defaults_and_limit_forms(tmp_path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(BASE + "evaluations: {zero_shot: {tasks: [embedded_lastword, piqa], limit: 0.5}}\n")
    spec = load_suite(path).evaluations.zero_shot
    assert spec.tasks == ["embedded_lastword", "piqa"] and spec.batch_size == 8 and spec.num_fewshot == 0
    assert spec.limit == 0.5
    path.write_text(BASE + "evaluations: {zero_shot: {tasks: [piqa], limit: 100.0}}\n")
    assert load_suite(path).evaluations.zero_shot.limit == 100 and isinstance(load_suite(path).evaluations.zero_shot.limit, int)
