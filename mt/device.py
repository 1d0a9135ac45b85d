"""Process-wide device settings: CPU threads, CUDA kernels and precision, the device to decode on."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from mt.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that multiply bf16 in hardware (Linux's names)


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


def native_cuda_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` multiplies bf16 in hardware (Ampere and later; ``torch.cuda.is_bf16_supported()``
    also counts the emulation older GPUs run, many times slower than fp32)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def decoding_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context to decode in at ``precision`` (``mt.config.DECODE_PRECISIONS``) on ``device``: bf16 autocast,
    or none at all for 32 (an autocast the caller set, Lightning's in a bf16 run's validation, stays on).

    Raises:
        ConfigError: bf16 on a GPU without native bfloat16 (before Ampere: emulated, slower than fp32).
    """
    if precision == "32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not native_cuda_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"precision={precision}: the GPU ({name}) has no bfloat16; expected precision=32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The CPU's feature flags as Linux lists them (``flags`` in /proc/cpuinfo); empty where there is no such file."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def native_bf16_flags(cpuinfo: Path | None = None) -> list[str]:
    """Those of the CPU's flags that mean it multiplies bf16 in hardware (``NATIVE_BF16_FLAGS``), sorted."""
    return sorted(set(NATIVE_BF16_FLAGS) & cpu_flags(cpuinfo))


def resolve_precision(precision: str, accelerator: str, *, cpuinfo: Path | None = None) -> tuple[str, str]:
    """Lightning's precision for ``trainer.precision``, and why: ``auto`` becomes ``bf16-mixed`` where the hardware
    multiplies bf16 natively (a CUDA GPU that supports it; a CPU with AVX-512 BF16 or AMX, where bf16 matrix
    products run 2-2.9x faster than fp32: docs/performance.md), else ``32-true`` (on an AVX2 CPU bf16 is emulated and
    several times slower). Any other value is returned as given, but ``16-mixed`` only on a GPU: Lightning would
    run it as bf16 on a CPU, behind the module's back (``ConfigError``)."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "16-mixed" and not on_gpu:
        raise ConfigError(
            f"trainer.precision=16-mixed: fp16 with a grad scaler needs a CUDA GPU (trainer.accelerator="
            f"{accelerator} trains on the CPU); use bf16-mixed or 32-true there, or auto"
        )
    if precision != "auto":
        return precision, "as configured"
    if on_gpu:
        if torch.cuda.is_available() and native_cuda_bf16(torch.device("cuda", torch.cuda.current_device())):
            return "bf16-mixed", "trainer.precision=auto: a GPU with bf16"
        return "32-true", "trainer.precision=auto: the GPU has no bf16"
    native = native_bf16_flags(cpuinfo)
    if native:
        return "bf16-mixed", f"trainer.precision=auto: the CPU multiplies bf16 natively ({', '.join(native)})"
    return "32-true", "trainer.precision=auto: the CPU has no native bf16 (avx512_bf16 or amx_bf16)"
