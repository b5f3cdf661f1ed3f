"""docs/tutorial.md runs: every python block, in order, in one namespace."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def test_tutorial_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)  # the tutorial is ours: running it is the test
    out = capsys.readouterr().out
    assert "bad.rules:2:" in out
