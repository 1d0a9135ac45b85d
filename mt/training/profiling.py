"""Where a training step's time goes: a ``torch.profiler`` trace of a few steady-state steps and its summary.

``trainer.profile_steps=N`` (with ``trainer.profile_after=K``) records updates K+1..K+N of this process (counted
from its start, a resumed one's too) on rank 0 with ``torch.profiler`` and writes, under ``<run dir>/profile/``,
the trace (``trace.json.gz``, for Perfetto or ``chrome://tracing``) and ``summary.txt``, which the log also
prints. A recorded step runs from the end of one update's batch to the end of the next (so it holds the data
loading of its batch, and the logging and checkpoint callbacks of the update before); under gradient
accumulation it holds all the update's micro-batches. The summary gives:

- wall time per step, and on a GPU the share of it in which the device runs a kernel or copy (busy) or waits
  for the host (idle);
- the top kernels (GPU) or operators (CPU) by their own time;
- host-device synchronisations per step: ``aten::_local_scalar_dense`` (``.item()``, ``bool(tensor)``: the host
  reading one device value) and CUDA's stream/device/event synchronisations (``.tolist()`` or ``.cpu()`` of a CUDA
  tensor is a ``Memcpy DtoH`` and a stream synchronisation), and the host-device copies;
- data-loading wait (the DataLoader's ``__next__``) and the optimizer update (from Lightning's
  ``on_before_optimizer_step`` to the end of ``optimizer.step``: clipping, the finiteness check and the update,
  not the forward and backward that Lightning's closure runs inside ``optimizer.step``), host time and, on a
  GPU, the device time of the kernels it launched.

The recording is torch.profiler's own; this module only schedules it on Lightning's steps and sums its events.
Lightning's ``PyTorchProfiler`` records whole runs of named actions and prints operator tables; it neither
skips warm-up steps by count nor reports the device's idle share or the syncs per step.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from mt.atomic import atomic_write

log = logging.getLogger(__name__)

# Host reads of device values and explicit waits (CUDA runtime calls appear as host events).
SYNC_EVENTS = (
    "aten::_local_scalar_dense",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
)
STEP_EVENT = "ProfilerStep"  # one host event a scheduled step: ProfilerStep#N in the trace, ProfilerStep* in events()
DATA_EVENT = "enumerate(DataLoader)#"  # torch.utils.data's own record_function around __next__
UPDATE_EVENT = "mt#optimizer_update"  # ours: on_before_optimizer_step to the optimizer's step post-hook


@dataclass(frozen=True)
class Event:
    """What the summary needs of one profiler event (times in microseconds)."""

    name: str
    on_device: bool
    start: float
    end: float
    self_time: float  # host events: time not spent in child events; device events: their duration
    device_time: float = 0.0  # host events: device time of the kernels they and their children launched

    @property
    def duration(self) -> float:
        return self.end - self.start


def events_of(profile: torch.profiler.profile) -> list[Event]:
    """The events of a finished ``torch.profiler.profile``."""
    events = []
    for event in profile.events():
        on_device = event.device_type != DeviceType.CPU
        if on_device and getattr(event, "is_user_annotation", False):
            continue  # a record_function range mirrored on the GPU timeline, not device work
        if event.name == SYNC_EVENTS[0] and _inside_operator(event):
            continue  # an operator reading its own scalars (the CPU fused AdamW's, per parameter): not a wait
        start, end = event.time_range.start, event.time_range.end
        own = end - start if on_device else event.self_cpu_time_total
        device_time = 0.0 if on_device else event.device_time_total
        events.append(Event(event.name, on_device, float(start), float(end), float(own), float(device_time)))
    return events


def _inside_operator(event) -> bool:
    """Whether a host event runs inside an operator (other than the ``aten::item`` that ``.item()`` calls)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::") and parent.name != "aten::item":
            return True
        parent = parent.cpu_parent
    return False


def busy_time(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (overlapping kernels on several streams count once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarize(events: list[Event], top: int = 12, complete: int | None = None) -> str:
    """The text summary of a profile's events (see the module docstring). ``complete``: how many of the recorded
    steps ended in an update; a run that stopped inside the window leaves one more, its tail, which is left out."""
    steps = sorted((e for e in events if not e.on_device and e.name.startswith(STEP_EVENT)), key=lambda e: e.start)
    steps = steps[:complete]
    if not steps:
        return "profile: no training step was recorded (fewer steps than trainer.profile_after + profile_steps?)"
    n = len(steps)
    window = (min(e.start for e in steps), max(e.end for e in steps))
    wall = window[1] - window[0]
    device = [e for e in events if e.on_device and window[0] <= e.start < window[1]]
    host = [e for e in events if not e.on_device and window[0] <= e.start < window[1]]
    lines = [f"profile: {n} training steps, {wall / n / 1e3:.2f} ms a step (wall)"]
    if device:
        busy = busy_time((e.start, min(e.end, window[1])) for e in device)
        lines.append(f"  device busy {busy / wall:.1%} of the wall time, idle {1 - busy / wall:.1%}")
    data = sum(e.duration for e in host if e.name.startswith(DATA_EVENT))
    updates = [e for e in host if e.name == UPDATE_EVENT]
    optimizer = sum(e.duration for e in updates)
    optimizer_kernels = sum(e.device_time for e in updates)
    lines.append(f"  data loading (DataLoader __next__, host): {data / n / 1e3:.2f} ms a step ({data / wall:.1%})")
    kernels = f", its kernels {optimizer_kernels / n / 1e3:.2f} ms on the device" if device else ""
    lines.append(
        f"  optimizer update (clipping, checks, step; host): {optimizer / n / 1e3:.2f} ms a step "
        f"({optimizer / wall:.1%}){kernels}"
    )
    # One .item() on a GPU is one _local_scalar_dense holding one cudaStreamSynchronize: each kind is listed.
    syncs = Counter(e.name for e in host if e.name in SYNC_EVENTS)
    kinds = SYNC_EVENTS if device else SYNC_EVENTS[:1]
    lines.append("  host-device syncs a step: " + ", ".join(f"{name} {syncs[name] / n:g}" for name in kinds))
    copies = Counter(e.name for e in device if e.name.startswith("Memcpy"))
    if copies:
        lines.append("  copies a step: " + ", ".join(f"{name} {c / n:g}" for name, c in sorted(copies.items())))
    own: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    for e in device or [e for e in host if not e.name.startswith(STEP_EVENT) and e.name != UPDATE_EVENT]:
        own[e.name] += e.self_time
        calls[e.name] += 1
    total = sum(own.values()) or 1.0
    kind = "kernels (device time)" if device else "operators (own host time)"
    lines.append(f"  top {kind}:")
    for name, t in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"    {t / total:6.1%} {t / n / 1e3:8.3f} ms/step {calls[name] / n:7.1f} calls/step  {name[:100]}")
    return "\n".join(lines)


class StepProfiler(L.Callback):
    """Profiles updates ``after + 1 .. after + steps`` of rank 0 into ``out_dir`` (module docstring)."""

    def __init__(self, out_dir: Path, after: int, steps: int) -> None:
        self.out_dir = Path(out_dir)
        self.after = after
        self.steps = steps
        self.profile: torch.profiler.profile | None = None
        self.summary: str | None = None
        self._update_range: torch.profiler.record_function | None = None
        self._hooks: list = []
        self._stepped_at = 0
        self._unrecorded = 0  # profiler steps before the recorded ones (waiting, warming up)
        self._steps_taken = 0  # profiler steps taken: updates ended since the profile started

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        activities = [ProfilerActivity.CPU]
        if trainer.strategy.root_device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        # One warm-up step before recording: the profiler's own start-up cost falls there.
        wait, warmup = max(self.after - 1, 0), min(self.after, 1)
        self._unrecorded = wait + warmup
        self.profile = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=self.steps, repeat=1),
            on_trace_ready=self._write,
        )
        self.profile.start()
        self._stepped_at = trainer.global_step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.profile is None:
            return
        if not self._hooks:
            self._hooks = [opt.register_step_post_hook(self._update_done) for opt in trainer.optimizers]
        self._update_done()  # a step the grad scaler skipped (16-mixed) never reached the post-hook
        self._update_range = torch.profiler.record_function(UPDATE_EVENT)
        self._update_range.__enter__()

    def _update_done(self, *args) -> None:
        if self._update_range is not None:
            self._update_range.__exit__(None, None, None)
            self._update_range = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.profile is not None and trainer.global_step > self._stepped_at:  # an update ended
            self._stepped_at = trainer.global_step
            self._steps_taken += 1
            self.profile.step()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        if trainer.global_rank == 0 and self.summary is None:
            log.warning(
                "trainer.profile_steps: the run ended before update %d, so nothing was profiled", self.after + 1
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()  # a profiler left running would refuse the next one in this process

    def _close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.profile is not None:
            self.profile.stop()  # a run that ends within the recorded steps writes what it recorded
            self.profile = None

    def _write(self, profile: torch.profiler.profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        profile.export_chrome_trace(str(self.out_dir / "trace.json.gz"))
        complete = min(max(self._steps_taken - self._unrecorded, 0), self.steps)
        self.summary = summarize(events_of(profile), complete=complete)
        with atomic_write(self.out_dir / "summary.txt") as handle:
            handle.write((self.summary + "\n").encode())
        log.info("%s\n  (trace: %s)", self.summary, self.out_dir / "trace.json.gz")
