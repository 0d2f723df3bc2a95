"""What the numbers were measured on (CPU, GPU, load, versions), and the resident memory Linux reports.

Everything here reads ``/proc`` (Linux) or ``platform``, and answers None (or the ``platform`` guess) elsewhere.
"""

import os
import platform
from typing import Any, Dict, List, Optional

import timm
import torch

from timm_tm import __version__

__all__ = ['cpu_name', 'load_average', 'proc_status_kb', 'reset_peak_rss', 'machine_record']


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
