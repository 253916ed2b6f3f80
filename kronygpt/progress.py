"""
Where a long phase is: at a terminal a progress bar (what it does, how far along, the time left) or, for a call
that has no steps to count, a line rewritten every second with the time spent and the time it usually takes;
in logs (output not a terminal) one line per phase when it ends, so a log is not flooded with bars.

    for block in progress(range(n_layer), "calibration: block moments", unit="block"):
        ...
    with phase("loading smollm2-135m (dequantising the GGUF)", expected=25):
        model = load_model("smollm2-135m")

KRONY_PROGRESS=0 turns the bars off at a terminal too (one line per phase); =1 forces them in logs.
"""

import os
import sys
import threading
import time
from contextlib import contextmanager

from tqdm import tqdm


def interactive():
    """Whether progress is drawn live: stderr is a terminal (KRONY_PROGRESS=0/1 overrides)."""
    forced = os.environ.get("KRONY_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


class Bar:
    """A bar updated by hand (bar.update(n), bar.close()) for loops inside library calls: a tqdm bar at a
    terminal, one line at close() in logs."""

    def __init__(self, total, desc, unit="it"):
        self.desc, self.unit, self.n, self.t0 = desc, unit, 0, time.time()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                        mininterval=0.5) if interactive() else None

    def update(self, n=1):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print(f"{self.desc}: {self.n} {plural(self.unit, self.n)} in {time.time() - self.t0:.0f}s",
                  file=sys.stderr, flush=True)


def progress(iterable, desc, total=None, unit="it"):
    """Iterate with a bar at a terminal, or one line when the phase has finished in logs (nothing when it stops
    early: an error's own sentence stays the last line)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if interactive():
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, mininterval=0.5)
        return
    t0, n = time.time(), 0
    for item in iterable:
        yield item
        n += 1
    print(f"{desc}: {n} {plural(unit, n)} in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)


def plural(unit, n):
    """'block' -> 'blocks'; a unit already plural ('matrices') or a count of one stays as it is."""
    return unit if n == 1 or unit.endswith("s") else unit + "s"


@contextmanager
def phase(desc, expected=None):
    """A phase with no steps of its own (a library call that takes a while): at a terminal a line rewritten every
    second, '<desc>: 12s (usually about 25s)'; in logs one line when it ends."""
    t0 = time.time()
    if not interactive():
        yield
        print(f"{desc}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        return
    done = threading.Event()

    def beat():
        while not done.wait(1.0):
            spent = time.time() - t0
            hint = f" (usually about {expected:.0f}s)" if expected else ""
            sys.stderr.write(f"\r{desc}: {spent:.0f}s{hint}   ")
            sys.stderr.flush()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        sys.stderr.write(f"\r{desc}: {time.time() - t0:.0f}s{' ' * 30}\n")
        sys.stderr.flush()
