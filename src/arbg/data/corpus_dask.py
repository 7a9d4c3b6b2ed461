"""Running the sequences of a corpus on Dask, and progress over a whole corpus.

:func:`run_on_dask` submits one task per sequence (:func:`arbg.data.corpora._run_in_worker`) and
records each result as it arrives; :class:`Progress` shows sequences done, ns, ns/h and an ETA
(log lines and a tqdm bar), reading the frames of sequences under way from their work
directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arbg.data.corpora import CorpusConfig

log = logging.getLogger(__name__)


class Progress:
    """Progress over a whole corpus: sequences done, ns done, rate and ETA (log + tqdm)."""

    def __init__(self, entries: dict[str, dict], config: CorpusConfig, bar: bool):
        self.entries, self.config = entries, config
        self.total_ns = sum(e["ns"] for e in entries.values())
        self.t0, self.ns0 = time.time(), self.ns_done()
        self.last_log, self.log_every_s = self.t0, 600.0
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=round(self.total_ns, 6),
                initial=round(self.ns0, 6),
                unit="ns",
                desc="corpus",
                bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} ns [{elapsed}<{remaining}{postfix}]",
            )
            self.bar.set_postfix_str(self._postfix())

    def ns_done(self, partial: dict[str, int] | None = None) -> float:
        ps = self.config.frame_interval_ps
        frames = {s: e["frames_done"] for s, e in self.entries.items()}
        frames.update(partial or {})
        return sum(f * ps / 1000.0 for f in frames.values())

    def _postfix(self, ns: float | None = None) -> str:
        n_done = sum(e["status"] == "done" for e in self.entries.values())
        elapsed = time.time() - self.t0
        rate = ((ns if ns is not None else self.ns0) - self.ns0) / max(elapsed, 1e-9) * 3600.0
        return f"{n_done}/{len(self.entries)} sequences, {rate:.2f} ns/h"

    def update(self, partial: dict[str, int] | None = None) -> None:
        """Refresh the bar with the frames on disk of the sequences under way."""
        now = self.ns_done(partial)
        if self.bar is not None:
            self.bar.n = round(now, 6)
            self.bar.set_postfix_str(self._postfix(now))  # refreshes
        if time.time() - self.last_log > self.log_every_s:  # for logs without the bar
            self.last_log = time.time()
            log.info("corpus: %.3f/%.3f ns, %s", now, self.total_ns, self._postfix(now))

    def finished(self, seq: str) -> None:
        e = self.entries[seq]
        now = self.ns_done()
        elapsed = time.time() - self.t0
        rate = (now - self.ns0) / elapsed * 3600.0 if elapsed > 0 else 0.0
        left = self.total_ns - now
        eta = format_duration(left / rate * 3600.0) if rate > 0 else "?"
        n_done = sum(x["status"] == "done" for x in self.entries.values())
        if e["status"] == "done":
            what = f"{seq} done ({e['split']}, {e['ns']:g} ns, {e.get('n_atoms')} atoms)"
        else:
            what = f"{seq} FAILED ({e.get('error')})"
        log.info(
            "corpus: %s; %d/%d sequences, %.3f/%.3f ns, %.2f ns/h, ETA %s",
            what,
            n_done,
            len(self.entries),
            now,
            self.total_ns,
            rate,
            eta,
        )
        self.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


def run_on_dask(
    out: Path,
    todo: list[str],
    split_of: dict[str, str],
    config: CorpusConfig,
    client,
    task: Callable[[str, str, str, dict], dict],
    record: Callable,
    tracker: Progress,
    poll_s: float,
    *,
    max_in_flight: int | None = None,
) -> None:
    """One Dask task per sequence; results are recorded as they finish (any order).

    `task(out_dir, sequence, split, config_dict)` runs one sequence on a worker and returns its
    manifest entry; `record(sequence, entry, error)` takes each result (entry None: failed).
    `max_in_flight`: submit at most this many tasks at a time, the next (in `todo`'s order,
    longest first) when one ends: on a cluster of fixed size, the next free worker takes the
    longest sequence left (Dask assigns a task to a worker when it is submitted; a few long
    tasks would otherwise queue behind each other on one worker while another idles). None:
    submit every task at once (an adaptive cluster scales on that backlog).

    A worker that dies mid-sequence costs that sequence's frames since its last chunk: the
    scheduler re-runs the task on another worker, which resumes ``work/{SEQ}``. Exceptions
    raised by a task are recorded as failures (re-run the corpus to retry them).
    """
    from distributed import wait

    root = str(out.resolve())  # workers may run in another directory
    run_id = uuid.uuid4().hex[:8]
    pending, futures, running = list(todo), {}, set()

    def submit_more() -> None:
        while pending and (max_in_flight is None or len(running) < max_in_flight):
            seq = pending.pop(0)
            key = f"arbg-corpus-{run_id}-{seq}"  # one task group: durations learnt, work stolen
            fut = client.submit(
                task, root, seq, split_of[seq], config.to_dict(), key=key, retries=0
            )
            futures[fut] = seq
            running.add(fut)

    submit_more()
    try:
        while running:
            try:
                with client.as_current():  # wait() looks up the client of the futures there
                    done, left = wait(list(running), timeout=poll_s, return_when="FIRST_COMPLETED")
                running.intersection_update(left)
            except TimeoutError:
                done = set()
            for fut in done:
                try:
                    entry = fut.result()
                except (Exception, asyncio.CancelledError) as e:  # its error, KilledWorker, ...
                    record(futures[fut], None, e)
                else:
                    record(futures[fut], entry, None)
            submit_more()
            tracker.update(partial_frames(out, [futures[f] for f in running]))
    finally:
        client.cancel(list(running))  # a running task finishes its chunk; the rest never start


def partial_frames(out: Path, sequences: Iterable[str]) -> dict[str, int]:
    """Frames on disk of the sequences under way (``work/{SEQ}/progress.json``)."""
    partial = {}
    for seq in sequences:
        p = out / "work" / seq / "progress.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            partial[seq] = int(json.loads(p.read_text())["n_frames"])
    return partial
