"""Every shipped rule is proved: `make test` runs `satura verify` over all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from satura.engine.saturate import default_rule_files

from satura.cli import main

pytestmark = [pytest.mark.z3, pytest.mark.slow]


def test_satura_verify_proves_every_shipped_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # a cold cache: every rule is proved afresh
    files = [str(p) for p in default_rule_files() if p.suffix == ".rules"]
    assert len(files) >= 2
    # --timeout: the verdicts come from counted cases; the safety net is widened so that a busy
    # machine (test files run in parallel) cannot turn a slow proof into "unknown"
    code = main(["verify", "--no-cache", "--timeout", "120", *files])
    out = capsys.readouterr().out
    print(out)  # per-rule times, shown with -s
    lines = [ln for ln in out.splitlines() if ln.startswith(("/", "rules")) or ".rules:" in ln]
    not_proved = [ln for ln in lines if " ok " not in ln]
    assert not not_proved, "\n".join(not_proved)
    summary = out.strip().splitlines()[-1]
    assert " 0 refuted, 0 unknown" in summary, summary
    assert code == 0
