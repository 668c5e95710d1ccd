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

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from vms.api.context import ApiContext
from vms.api.errors import ApiError, local_time
from vms.api.remux import NoFootage, RemuxCancelled, find_segments, remux_range
from vms.db.engine import rows_matched
from vms.db.models import ExportJob, ExportState, Segment, Station

log = logging.getLogger(__name__)


ACTIVE = (ExportState.QUEUED, ExportState.RUNNING)


class ExportRunner:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=ctx.settings.api.export_workers, thread_name_prefix="export")
        self._stopping = threading.Event()
        # Held from the limit check to the commit of a new job, so two requests at once cannot both fit
        # into the last place (one API process per deployment).
        self.admission = threading.Lock()

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
                if job is None or job.state != ExportState.QUEUED:
                    return
                job.state = ExportState.RUNNING
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
                                 cancelled=self._stopping.is_set, tz=ctx.settings.tz)
            keep_ms = int(ctx.settings.api.export_keep_hours * 3_600_000)
            note = f"；{result.truncated}" if result.truncated else ""
            self._set(job_id, state=ExportState.DONE, progress=1.0, path=out.name, bytes=result.bytes,
                      expires_ms=ctx.clock.now_ms() + keep_ms,
                      error=(f"从关键帧 {local_time(result.first_ms, ctx.settings.tz)} 开始{note}" if note else None))
            log.info("export %s of %s done: %d bytes", job_id, station.id if station else "?", result.bytes)
        except NoFootage as exc:
            self._set(job_id, state=ExportState.FAILED, error=str(exc))
        except RemuxCancelled:
            self._set(job_id, state=ExportState.FAILED, error="已取消：服务器已停止")
        except Exception as exc:
            log.exception("export %s failed", job_id)
            self._set(job_id, state=ExportState.FAILED, error=
                      f"导出失败（服务器内部错误 {type(exc).__name__}，详见日志）")


def estimated_bytes(session: Session, station_id: str, start_ms: int, end_ms: int) -> int:
    """The size of an export of [start_ms, end_ms): the overlapping part of each main-stream segment."""
    rows = session.execute(
        select(Segment.start_ms, Segment.end_ms, Segment.bytes)
        .where(Segment.station_id == station_id, Segment.stream == "main",
               Segment.state.in_(("growing", "complete")), Segment.start_ms < end_ms, Segment.end_ms > start_ms)
    ).all()
    total = 0.0
    for s, e, size in rows:
        total += (size or 0) * (min(e, end_ms) - max(s, start_ms)) / max(e - s, 1)
    return int(total)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_export_limits(ctx: ApiContext, session: Session, username: str, estimate: int) -> None:
    """Refuse (429 with a stable code) an export that would pass the limits on exports in progress or
    on the bytes of exports kept, per user and in all. Call under ExportRunner.admission."""
    api = ctx.settings.api
    now = ctx.clock.now_ms()
    jobs = session.execute(
        select(ExportJob.username, ExportJob.state, ExportJob.station_id, ExportJob.start_ms, ExportJob.end_ms,
               ExportJob.bytes)
        .where(or_(ExportJob.state.in_(ACTIVE), (ExportJob.state == ExportState.DONE) & (ExportJob.expires_ms > now)))
    ).all()
    active_mine = sum(1 for j in jobs if j.state in ACTIVE and j.username == username)
    active_all = sum(1 for j in jobs if j.state in ACTIVE)
    if active_mine >= api.export_max_active_per_user:
        raise ApiError(429, "export_busy_user", f"你已有 {active_mine} 个导出在进行中（每人最多 "
                                                f"{api.export_max_active_per_user} 个），请等它们完成后再导出")
    if active_all >= api.export_max_active:
        raise ApiError(429, "export_busy", f"服务器上已有 {active_all} 个导出在进行中（最多 {api.export_max_active} "
                                           "个），请稍后再试")
    kept_mine = kept_all = 0
    for j in jobs:
        if j.state == ExportState.DONE:
            size = j.bytes or 0
        else:
            size = estimated_bytes(session, j.station_id, j.start_ms, j.end_ms)
        kept_all += size
        if j.username == username:
            kept_mine += size
    keep = f"导出文件在完成 {ctx.settings.api.export_keep_hours:g} 小时后删除"
    if kept_mine + estimate > api.export_max_bytes_per_user:
        raise ApiError(429, "export_quota_user",
                       f"导出文件总量将超过每人上限 {_gb(api.export_max_bytes_per_user)}：你已有 {_gb(kept_mine)}，"
                       f"本次约 {_gb(estimate)}；{keep}")
    if kept_all + estimate > api.export_max_bytes:
        raise ApiError(429, "export_quota",
                       f"服务器上的导出文件总量将超过上限 {_gb(api.export_max_bytes)}：已有 {_gb(kept_all)}，"
                       f"本次约 {_gb(estimate)}；{keep}")


def export_runner(ctx: ApiContext) -> ExportRunner:
    return ctx.singleton("exports", lambda: ExportRunner(ctx))


def export_path(ctx: ApiContext, job_id: str) -> Path:
    return ctx.export_dir / f"{job_id}.mp4"


def recover_interrupted(ctx: ApiContext) -> int:
    """Jobs left queued or running by a previous process will never finish: mark them failed, and delete
    the partial files they left (a kill -9 skips remux_range's own clean-up)."""
    if "exports" in ctx.extras:  # this process already runs jobs
        return 0
    for part in ctx.export_dir.glob("*.mp4.part"):
        part.unlink(missing_ok=True)
    with ctx.database.session() as s:
        res = s.execute(update(ExportJob).where(ExportJob.state.in_(ACTIVE))
                        .values(state=ExportState.FAILED, error="服务器重启中断了导出：请重新导出"))
        return rows_matched(res)


def expire_exports(ctx: ApiContext) -> int:
    """Delete files of exports past their expiry; the rows stay (state expired) as a record."""
    now = ctx.clock.now_ms()
    n = 0
    with ctx.database.session() as s:
        for job in s.scalars(select(ExportJob).where(ExportJob.state == ExportState.DONE, ExportJob.expires_ms <= now)):
            export_path(ctx, job.id).unlink(missing_ok=True)
            job.state = ExportState.EXPIRED
            n += 1
    return n
