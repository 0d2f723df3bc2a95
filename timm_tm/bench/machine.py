"""What the numbers were measured on (CPU, GPU, load, versions), and the resident memory Linux reports.

Everything here reads ``/proc`` (Linux) or ``platform``, and answers None (or the ``platform`` guess) elsewhere.
"""

import os
import platform
import re
from typing import Any, Dict, List, Optional

import timm
import torch

from timm_tm import __version__

__all__ = [
    'cpu_name', 'cpu_field', 'load_average', 'proc_status_kb', 'reset_peak_rss', 'machine_record', 'numerics_record',
]  # fmt: skip

# environment variables that change which CPU kernels oneDNN, ATen and MKL dispatch to (and so the rounding)
KERNEL_ENV = (
    'ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'ONEDNN_DEFAULT_FPMATH_MODE', 'DNNL_DEFAULT_FPMATH_MODE',
    'ATEN_CPU_CAPABILITY', 'MKL_ENABLE_INSTRUCTIONS', 'MKL_CBWR',
)  # fmt: skip
# the CPU flags that name vector instruction sets (x86 'flags', Arm 'Features' in /proc/cpuinfo)
_VECTOR_FLAG = re.compile(r'sse\w*|ssse3|avx\w*|amx\w*|fma4?|f16c|asimd\w*|sve\w*|sme\d*|neon|bf16|i8mm')


def cpu_field(*names: str) -> Optional[str]:
    """The first of the fields ``names`` of ``/proc/cpuinfo`` (its first CPU), or None (not Linux, no such field)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, sep, value = line.partition(':')
                if sep and key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    return cpu_field('model name') or platform.processor() or platform.machine()


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (None where the OS has none): a busy machine makes noisy rounds."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def proc_status_kb(field: str) -> Optional[int]:
    """``field`` of ``/proc/self/status`` in kB (``VmRSS``: resident now, ``VmHWM``: peak resident); None off Linux."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current ``VmRSS``; False where the OS cannot (not Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def machine_record(device: str, threads: int) -> Dict[str, Any]:
    """The machine and software of a run on ``device`` with ``threads`` CPU threads, as the results record them."""
    return {
        'cpu': cpu_name(),
        'logical_cpus': os.cpu_count(),
        'torch_threads': threads,
        'gpu': torch.cuda.get_device_name(torch.device(device)) if device.startswith('cuda') else None,
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_tm': __version__,
    }


def numerics_record(threads: int, device: str = 'cpu') -> Dict[str, Any]:
    """What a run's floating-point results depend on besides the code, the data and the seed: the CPU kind (what
    oneDNN, ATen and MKL dispatch their kernels to: model, cache, vector instruction sets, the variables that cap
    them), the torch and timm builds, the thread count and the GPU. Two runs agree bit for bit only where these agree;
    elsewhere the rounding differs and training amplifies it (``benchmarks/reproduce.py`` checks within a tolerance).
    """
    flags = cpu_field('flags', 'Features')
    return {
        'cpu': cpu_name(),
        'cpu_cache': cpu_field('cache size'),
        'cpu_vector_isa': sorted({f for f in flags.split() if _VECTOR_FLAG.fullmatch(f)}) if flags else None,
        'aten_cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'kernel_env': {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        'torch': torch.__version__,
        'timm': timm.__version__,
        'threads': threads,
        'gpu': torch.cuda.get_device_name(torch.device(device)) if device.startswith('cuda') else None,
    }
