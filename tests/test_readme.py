"""The README's optimizer table lists every optimizer class, so a new optimizer cannot land undocumented."""

import re
from pathlib import Path

import fastopt

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_optimizer_class_has_a_row_in_the_readme_table():
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    missing = [cls.__name__ for cls in fastopt.OPTIMIZERS.values()
               if not any(re.match(rf"\| [^|]*`{cls.__name__}`", row) for row in rows)]
    assert not missing, f"README.md's optimizer table has no row for {missing}"
