"""The type checker (issue 17 item 11): scripts/test.sh runs mypy over vms/ in both tiers, configured so that
it sees vms's own names. It would have caught item 10: stations.py imported `Calibration` from
vms.analysis.calibration, where the class is `StationCalibration`, inside a try whose `except ImportError`
swallowed the failure."""

from __future__ import annotations

from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parent.parent

ITEM_10 = '''
def validate(raw: dict) -> None:
    try:
        from vms.analysis.calibration import Calibration
    except ImportError:
        return
    Calibration(**raw)
'''


def _mypy(monkeypatch, *args: str) -> tuple[str, int]:
    # As scripts/test.sh runs it: from the repository, with pyproject.toml's [tool.mypy]. In this process (no
    # subprocess: the fast tier starts none); the cache test.sh's run left makes it take a second.
    monkeypatch.chdir(REPO)
    out, err, status = api.run([*args])
    return out + err, status


def test_a_name_missing_from_a_vms_module_is_an_error_even_when_its_import_error_is_caught(tmp_path, monkeypatch):
    snippet = tmp_path / "snippet.py"
    snippet.write_text(ITEM_10)
    out, status = _mypy(monkeypatch, str(snippet))
    assert status == 1, out
    assert 'Module "vms.analysis.calibration" has no attribute "Calibration"' in out, out


def test_a_name_that_exists_passes(tmp_path, monkeypatch):
    # The error above is about the name, not the checker failing to find vms at all.
    snippet = tmp_path / "snippet.py"
    snippet.write_text(ITEM_10.replace("Calibration", "StationCalibration"))
    out, status = _mypy(monkeypatch, str(snippet))
    assert status == 0, out


def test_the_test_command_runs_the_checker_before_either_tier():
    script = (REPO / "scripts" / "test.sh").read_text()
    lines = [line.strip() for line in script.splitlines()]
    mypy_at = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == ".venv/bin/mypy")
    assert mypy_at < next(i for i, line in enumerate(lines) if line.startswith('if [ "$fast" = 1 ]'))
    config = (REPO / "pyproject.toml").read_text()
    assert 'packages = ["vms"]' in config
