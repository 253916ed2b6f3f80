"""
Claims on outputs: before a command writes an output it claims it with a lock file made by an exclusive create, so
that two commands writing the same output at once cannot both pass the "does it exist?" check and both report
success. A lock whose process is gone (a SIGKILL) or that is empty (a full disk) is taken over.
"""

import os
import shutil

from .errors import UserError


def alive(pid):
    """Whether a process with this pid exists (pids <= 0 name no one process: never alive)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """An output claimed before any work: lock_path holds the pid of the process writing it, made by an exclusive
    create, so of two commands writing the same output at once the second is refused with one sentence while the
    first lives. A lock left by a dead process, or an empty one (a full disk), is taken over. release() (or the
    end of a `with`) removes it.

        with Claim(out + ".lock", f"--out {out}"):
            ... write out ...
    """

    def __init__(self, lock_path, what):
        self.path = lock_path
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self.holder()
                if pid is not None and pid != os.getpid() and alive(pid):
                    raise UserError(f"{what} is being written by another command (pid {pid}); wait for it, stop "
                                    f"it, or choose another path") from None
                try:
                    os.remove(self.path)  # stale: its process is gone, or the lock is empty
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise UserError(f"could not claim {what} ({e.strerror or e}); check the folder is writable and the "
                                f"disk has room") from None
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as e:
                os.remove(self.path)
                raise UserError(f"could not claim {what} ({e.strerror or e}); free disk space") from None
            return
        raise UserError(f"could not claim {what}: another command is starting to write it")

    def holder(self):
        try:
            with open(self.path) as f:
                return int(f.read().strip() or -1)
        except (OSError, ValueError):
            return None

    def release(self):
        if self.holder() == os.getpid():
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def remove_dead_temps(parent, prefix):
    """Remove the files and folders `parent/<prefix><pid>` (or `<prefix><pid>-...`) whose process is gone: a
    SIGKILL skips every cleanup. A live process's own (this one's included) are kept."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0]
        if name.startswith(prefix) and pid.isdigit() and not alive(int(pid)):
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
