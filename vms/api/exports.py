"""Export jobs: one MP4 for a station and range, made by a small thread pool in the API process.

State lives in the exports table (queued -> running -> done | failed; done -> expired after
settings.api.export_keep_hours, when the file is deleted). The file starts at the keyframe at or before
the start asked for, like playback. Jobs cut short by a restart are marked failed at start-up.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select, update

from vms.api.context import ApiContext
from vms.api.remux import NoFootage, RemuxCancelled, find_segments, remux_range
from vms.db.models import ExportJob, Station

log = logging.getLogger(__name__)


class ExportRunner:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=ctx.settings.api.export_workers, thread_name_prefix="export")
        self._stopping = threading.Event()

    def submit(self, job_id: str):
        return self.pool.submit(self._run, job_id)

    def shutdown(self) -> None:
        self._stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _set(self, job_id: str, **values) -> None:
        with self.ctx.database.session() as s:
            s.execute(update(ExportJob).where(ExportJob.id == job_id).values(**values))

    def _run(self, job_id: str) -> None:
        ctx = self.ctx
        try:
            with ctx.database.session() as s:
                job = s.get(ExportJob, job_id)
                if job is None or job.state != "queued":
                    return
                job.state = "running"
                station = s.get(Station, job.station_id)
                sources = find_segments(s, ctx.volumes, job.station_id, job.start_ms, job.end_ms)
                start_ms, end_ms = job.start_ms, job.end_ms
            out = export_path(ctx, job_id)
            last = [0.0]

            def progress(fraction: float) -> None:
                if fraction - last[0] >= 0.05:
                    last[0] = fraction
                    self._set(job_id, progress=round(fraction, 3))

            result = remux_range(sources, start_ms, end_ms, out, progress=progress,
                                 cancelled=self._stopping.is_set)
            keep_ms = int(ctx.settings.api.export_keep_hours * 3_600_000)
            note = f"; {result.truncated}" if result.truncated else ""
            self._set(job_id, state="done", progress=1.0, path=out.name, bytes=result.bytes,
                      expires_ms=ctx.clock.now_ms() + keep_ms,
                      error=(f"starts at keyframe {result.first_ms}{note}" if note else None))
            log.info("export %s of %s done: %d bytes", job_id, station.id if station else "?", result.bytes)
        except NoFootage as exc:
            self._set(job_id, state="failed", error=str(exc))
        except RemuxCancelled:
            self._set(job_id, state="failed", error="cancelled: the server stopped")
        except Exception as exc:
            log.exception("export %s failed", job_id)
            self._set(job_id, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])


def export_runner(ctx: ApiContext) -> ExportRunner:
    return ctx.singleton("exports", lambda: ExportRunner(ctx))


def export_path(ctx: ApiContext, job_id: str) -> Path:
    return ctx.export_dir / f"{job_id}.mp4"


def recover_interrupted(ctx: ApiContext) -> int:
    """Jobs left queued or running by a previous process will never finish: mark them failed."""
    if "exports" in ctx.extras:  # this process already runs jobs
        return 0
    with ctx.database.session() as s:
        res = s.execute(update(ExportJob).where(ExportJob.state.in_(("queued", "running")))
                        .values(state="failed", error="interrupted by a server restart; start it again"))
        return res.rowcount or 0


def expire_exports(ctx: ApiContext) -> int:
    """Delete files of exports past their expiry; the rows stay (state expired) as a record."""
    now = ctx.clock.now_ms()
    n = 0
    with ctx.database.session() as s:
        for job in s.scalars(select(ExportJob).where(ExportJob.state == "done", ExportJob.expires_ms <= now)):
            export_path(ctx, job.id).unlink(missing_ok=True)
            job.state = "expired"
            n += 1
    return n
