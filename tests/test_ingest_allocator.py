"""The ingest workers' malloc (ingest.allocator, vms/ingest/allocator.py): jemalloc when it is installed,
put into LD_PRELOAD before any thread starts so that the spawned workers load it; glibc on request; a
settings error when jemalloc is asked for by name and missing. And a real `vms serve`'s workers have it
mapped (CI installs libjemalloc2 through scripts/bootstrap.sh)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.serve_support import running_serve
from vms.ingest import allocator
from vms.ingest.allocator import AllocatorUnavailable, find_jemalloc, use_for_workers


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "JEMALLOC_CANDIDATES", (tmp_path / "absent" / "libjemalloc.so.2", lib))
    return lib


@pytest.fixture
def missing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(allocator, "JEMALLOC_CANDIDATES", (tmp_path / "libjemalloc.so.2",))


def test_auto_preloads_jemalloc_after_what_was_preloaded(installed):
    env = {"LD_PRELOAD": "/opt/other.so", "PATH": "/usr/bin"}
    assert use_for_workers("auto", env) == "jemalloc"
    assert env["LD_PRELOAD"] == f"/opt/other.so {installed}"
    assert env["MALLOC_CONF"] == allocator.JEMALLOC_CONF
    assert use_for_workers("auto", env) == "jemalloc" and env["LD_PRELOAD"].count("libjemalloc") == 1  # twice: once


def test_an_operators_malloc_conf_is_kept(installed):
    env = {"MALLOC_CONF": "narenas:1"}
    use_for_workers("jemalloc", env)
    assert env["MALLOC_CONF"] == "narenas:1"


def test_glibc_takes_jemalloc_out_and_keeps_the_rest(installed):
    env = {"LD_PRELOAD": f"/opt/other.so:{installed}"}
    assert use_for_workers("glibc", env) == "glibc"
    assert env["LD_PRELOAD"] == "/opt/other.so"
    env = {"LD_PRELOAD": str(installed)}
    use_for_workers("glibc", env)
    assert "LD_PRELOAD" not in env


def test_auto_without_jemalloc_is_glibc_and_changes_nothing(missing):
    env = {"PATH": "/usr/bin"}
    assert use_for_workers("auto", env) == "glibc"
    assert env == {"PATH": "/usr/bin"}


def test_jemalloc_by_name_without_it_is_an_error_naming_the_key(missing):
    with pytest.raises(AllocatorUnavailable, match=r"ingest\.allocator is jemalloc.*apt install libjemalloc2"):
        use_for_workers("jemalloc", {})


def _workers(proc: psutil.Process) -> list[psutil.Process]:
    return [c for c in proc.children(recursive=True)
            if "multiprocessing.spawn" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]


def _maps(p: psutil.Process) -> str:
    return Path(f"/proc/{p.pid}/maps").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["auto", "glibc"])
def test_vms_serve_workers_allocate_with_the_chosen_malloc(tmp_path, choice):
    if find_jemalloc() is None:
        pytest.fail("libjemalloc2 is not installed: run scripts/bootstrap.sh")
    with running_serve(tmp_path, cameras=1, footage_seconds=1, settings={"alerts": {"enabled": False},
                       "ingest": {"segment_seconds": 4, "status_interval_seconds": 1, "allocator": choice}}) as srv:
        workers = _workers(psutil.Process(srv["proc"].pid))
        assert workers, "no ingest worker process found"
        for w in workers:
            assert ("libjemalloc" in _maps(w)) == (choice == "auto"), w.cmdline()
        assert "libjemalloc" not in _maps(psutil.Process(srv["proc"].pid))  # the serve process itself: glibc
