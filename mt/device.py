"""Process-wide device settings: CPU threads, CUDA kernels and precision, the device to decode on."""

from __future__ import annotations

import os

import torch


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def prepare_cuda(*, tf32: bool = True) -> None:
    """Process-wide CUDA settings for mt's workloads (a no-op without a GPU).

    - cuDNN attention off: torch >= 2.9 prefers cuDNN's SDPA kernel for bf16/fp16 on Hopper and
      Blackwell, and cuDNN builds an execution plan for every new shape, hundreds of milliseconds each.
      Token-bucketed batches and incremental decoding change shape at nearly every call: on an H200
      (torch 2.11) bf16 decoding ran 14-20x slower than fp32 and a first epoch of bf16 training at about
      a tenth of the speed of later epochs, whose shapes had been seen. SDPA then picks the flash or
      memory-efficient kernel, as torch <= 2.8 did.
    - ``tf32``: fp32 matrix products on TF32 tensor cores (Ampere and later), through
      ``torch.set_float32_matmul_precision``, the API Lightning reads: setting the newer
      ``torch.backends.cuda.matmul.fp32_precision`` instead makes torch >= 2.9 raise when Lightning then
      calls ``torch.get_float32_matmul_precision()`` ("mix of the legacy and new APIs"), at every GPU start.
    """
    if not torch.cuda.is_available():
        return
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # decoding after training: fp32 again


def best_device() -> torch.device:
    """The device to decode on: the GPU if there is one (set up by ``prepare_cuda``), else the CPU. Under torchrun
    each process takes the GPU of its ``LOCAL_RANK``."""
    prepare_cuda(tf32=False)  # decoding keeps full fp32 matmuls
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank % torch.cuda.device_count())
