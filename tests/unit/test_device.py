"""trainer.precision=auto: bf16-mixed where the CPU multiplies bf16 natively, fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

import mt.device
from mt.device import cpu_flags, resolve_precision
from mt.errors import ConfigError
from tests.conftest import tiny_train_config

# /proc/cpuinfo excerpts (one processor each, trimmed): a Zen 4 EPYC with AVX-512 BF16, a Zen 3 EPYC with AVX2
# only, and a Sapphire Rapids Xeon with AMX but (as some hypervisors hide it) without avx512_bf16.
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni
bugs\t\t: sysret_ss_attrs
"""
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx f16c fma avx2 bmi2 vaes
"""
SPR = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu avx2 avx512f avx512bw avx512vl amx_tile amx_int8 amx_bf16
"""


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path

    return write


def test_cpu_flags_reads_the_flags_line_and_nothing_else(cpuinfo):
    flags = cpu_flags(cpuinfo(ZEN3))
    assert flags == {"fpu", "sse2", "avx", "f16c", "fma", "avx2", "bmi2", "vaes"}
    assert cpu_flags(cpuinfo("processor\t: 0\n")) == set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [(ZEN4, "bf16-mixed"), (SPR, "bf16-mixed"), (ZEN3, "32-true"), ("", "32-true")],
    ids=["avx512_bf16", "amx_bf16", "avx2-only", "no-flags"],
)
def test_auto_on_cpu_is_bf16_only_where_the_cpu_multiplies_it_natively(cpuinfo, text, expected):
    precision, why = resolve_precision("auto", "cpu", cpuinfo=cpuinfo(text))
    assert precision == expected
    assert "auto" in why


def test_auto_without_a_cpuinfo_file_is_fp32(tmp_path):
    assert resolve_precision("auto", "cpu", cpuinfo=tmp_path / "missing")[0] == "32-true"


@pytest.mark.parametrize("given", ["32-true", "bf16-mixed"])
def test_any_other_precision_is_kept_whatever_the_cpu(cpuinfo, given):
    assert resolve_precision(given, "cpu", cpuinfo=cpuinfo(ZEN4))[0] == given
    assert resolve_precision(given, "cpu", cpuinfo=cpuinfo(ZEN3))[0] == given
    assert resolve_precision(given, "gpu", cpuinfo=cpuinfo(ZEN3))[0] == given


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_fp16_on_the_cpu_is_refused_in_one_line(cpuinfo, monkeypatch, accelerator):
    """Lightning runs ``16-mixed`` as bf16 on a CPU, while the module chose its optimizer and clipping for fp16: the
    first update crashed on a "fused optimizer" traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.precision=16-mixed: .* needs a CUDA GPU"):
        resolve_precision("16-mixed", accelerator, cpuinfo=cpuinfo(ZEN4))
    assert resolve_precision("16-mixed", "gpu", cpuinfo=cpuinfo(ZEN4))[0] == "16-mixed"


@pytest.mark.parametrize(("text", "expected"), [(ZEN4, "bf16-mixed"), (ZEN3, "32-true")])
def test_the_trainer_runs_in_the_resolved_precision(cpuinfo, monkeypatch, toy_corpus_dir, tmp_path, text, expected):
    from mt.training.trainer import build_trainer

    monkeypatch.setattr(mt.device, "CPUINFO", cpuinfo(text))
    trainer, _ = build_trainer(tiny_train_config(toy_corpus_dir, **{"trainer.precision": "auto"}), tmp_path)
    assert trainer.precision == expected


def test_an_unknown_precision_is_refused_naming_the_choices(toy_corpus_dir):
    with pytest.raises(ConfigError, match=r"trainer.precision='bf16'.*auto"):
        tiny_train_config(toy_corpus_dir, **{"trainer.precision": "bf16"})


def test_a_gpu_that_only_emulates_bf16_gets_fp32_for_auto_and_refuses_bf16_decoding(monkeypatch):
    """Before Ampere torch creates bf16 tensors (``is_bf16_supported()`` says yes, by emulation), many times
    slower than fp32: neither auto training nor bf16 decoding takes it for bf16 hardware."""
    import contextlib

    from mt.device import decoding_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "gpu") == ("32-true", "trainer.precision=auto: the GPU has no bf16")
    with pytest.raises(ConfigError, match=r"precision=bf16: the GPU \(Tesla V100\) has no bfloat16"):
        decoding_precision(torch.device("cuda", 0), "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere on
    assert resolve_precision("auto", "gpu")[0] == "bf16-mixed"
    decoding_precision(torch.device("cuda", 0), "bf16")  # accepted (an autocast context, not entered here)
