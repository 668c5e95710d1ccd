"""Who may read what vms writes: footage, keyframes, exports, the learned looks and the database (which
holds camera credentials) are the service's own. Every `vms` command sets a umask of 027 at start, so
directories are made 0750 and files 0640 (the service's group may read, say for backups; others
nothing); the SQLite file is 0600 (vms.db.engine)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o027


def use_private_umask() -> None:
    """Files and directories made from now on by this process and its children are closed to others."""
    os.umask(PRIVATE_UMASK)


def close_to_others(path: Path, also_group: bool = False) -> None:
    """Take the 'other' (and with `also_group` the group) permissions off an existing directory or file
    made before vms set its umask, or by hand: closing a root closes everything under it. A path that
    is not ours to change is logged and left."""
    closed = 0o077 if also_group else 0o007
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & closed:
            os.chmod(path, mode & ~closed)
            log.info("%s was open to others (%o): now %o", path, mode, mode & ~closed)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot restrict the permissions of %s: %s", path, exc)


def close_data_to_others(data_dir: Path, volume_roots: list[Path]) -> None:
    """At start-up of the recorder: the data folder and each footage root lose their 'other' rights,
    which also closes what an older version (or a copy by hand) left world-readable under them."""
    for root in (data_dir, *volume_roots):
        close_to_others(Path(root))
