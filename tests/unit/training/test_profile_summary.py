"""The profile summary's arithmetic, on hand-made events with hand-computed figures."""

from __future__ import annotations

from types import SimpleNamespace

from torch.autograd import DeviceType

from mt.training.profiling import Event, busy_time, events_of, summarize


def test_busy_time_is_the_union_of_overlapping_intervals():
    assert busy_time([(20, 30), (0, 10), (5, 15), (22, 25), (15, 16)]) == 16 + 10
    assert busy_time([]) == 0


def host(name, start, end, own=None, device_time=0.0):
    return Event(name, False, start, end, end - start if own is None else own, device_time)


def kernel(name, start, end):
    return Event(name, True, start, end, end - start)


def test_summary_figures_per_step():
    events = [
        host("ProfilerStep#3", 0, 1000),
        host("ProfilerStep#4", 1000, 2000),
        host("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 10, 110),  # 100 us
        host("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 1010, 1310),  # 300 us
        host("mt#optimizer_update", 800, 900, device_time=200),  # launched the adam kernel below
        host("aten::_local_scalar_dense", 950, 960),
        host("cudaStreamSynchronize", 951, 959),
        kernel("gemm", 100, 400),
        kernel("gemm", 300, 600),  # overlaps the first on another stream: busy 100-600
        kernel("fused_adam_kernel", 1500, 1700),
        kernel("Memcpy DtoH (Device -> Pageable)", 1800, 1810),
        kernel("after the window", 2500, 2600),  # not counted
    ]
    summary = summarize(events)
    assert "profile: 2 training steps, 1.00 ms a step (wall)" in summary
    assert "device busy 35.5% of the wall time, idle 64.5%" in summary  # (500 + 200 + 10) / 2000
    assert "data loading (DataLoader __next__, host): 0.20 ms a step (20.0%)" in summary
    assert "optimizer update (clipping, checks, step; host): 0.05 ms a step (5.0%), its kernels 0.10 ms" in summary
    assert "aten::_local_scalar_dense 0.5, cudaStreamSynchronize 0.5, cudaDeviceSynchronize 0," in summary
    assert "Memcpy DtoH (Device -> Pageable) 0.5" in summary
    top = summary.split("top kernels (device time):\n")[1].splitlines()
    assert top[0].split()[0] == "74.1%" and top[0].endswith("gemm")  # 600 of the 810 us of kernels in the window
    assert "after the window" not in summary


def test_summary_leaves_out_steps_past_the_complete_ones():
    events = [
        host("ProfilerStep#4", 1000, 2000),  # listed out of order: the first steps by start time count
        host("ProfilerStep#3", 0, 1000),
        host("ProfilerStep#5", 2000, 9000),  # the tail of a run that stopped inside the window
        host("aten::mm", 100, 300),
        host("aten::mm", 2500, 8000),  # in the tail: not counted
    ]
    summary = summarize(events, complete=2)
    assert "profile: 2 training steps, 1.00 ms a step (wall)" in summary
    assert "0.100 ms/step" in summary and "1.0 calls/step" not in summary  # 200 us over 2 steps, 0.5 calls each
    assert "profile: 3 training steps, 3.00 ms a step" in summarize(events)


def test_summary_without_steps_says_so():
    assert "no training step was recorded" in summarize([host("aten::mm", 0, 10)])


def test_events_leave_out_device_annotations_and_reads_inside_operators():
    """With CUDA on, kineto mirrors each record_function range (ProfilerStep#N, ...) on the GPU timeline; it is not
    device work and would make the device look busy all the time. A scalar read inside an operator (the CPU fused
    AdamW reads its own step counts) is not the host waiting for the device; a ``.item()`` from Python is."""

    def event(name, device, start, end, annotation=False, parent=None):
        return SimpleNamespace(
            name=name,
            device_type=device,
            time_range=SimpleNamespace(start=start, end=end),
            self_cpu_time_total=end - start,
            device_time_total=7.0,
            is_user_annotation=annotation,
            cpu_parent=parent,
        )

    step = event("ProfilerStep#0", DeviceType.CPU, 0, 100)
    python_read = event("aten::item", DeviceType.CPU, 40, 45, parent=step)
    adamw = event("aten::_fused_adamw_", DeviceType.CPU, 50, 60, parent=step)
    kernel_read = event("aten::item", DeviceType.CPU, 51, 52, parent=adamw)
    profile = SimpleNamespace(
        events=lambda: [
            step,
            event("ProfilerStep#0", DeviceType.CUDA, 0, 100, annotation=True),
            event("gemm", DeviceType.CUDA, 10, 30),
            event("aten::_local_scalar_dense", DeviceType.CPU, 41, 44, parent=python_read),  # .item() in Python
            event("aten::_local_scalar_dense", DeviceType.CPU, 51, 52, parent=kernel_read),  # inside an operator
        ]
    )
    events = events_of(profile)
    names = [(e.name, e.on_device) for e in events]
    assert names == [("ProfilerStep#0", False), ("gemm", True), ("aten::_local_scalar_dense", False)]
    assert events[0].device_time == 7.0 and events[1].self_time == 20
    summary = summarize(events)
    assert "device busy 20.0% of the wall time" in summary and "aten::_local_scalar_dense 1," in summary
