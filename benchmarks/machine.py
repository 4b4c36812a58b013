"""The machine a benchmark ran on, in one line: processor, vector units, cores, memory."""
import os
import platform


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n")[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine(), set()
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition(":") for line in first_cpu)}
    return fields.get("model name") or platform.machine(), set(fields.get("flags", "").split())


def vector_isa():
    """The widest fp32 FMA vectors the processor has: 'avx512' (16 lanes) or 'avx2' (8)."""
    return "avx512" if "avx512f" in _cpuinfo()[1] else "avx2"


def description():
    name, _ = _cpuinfo()
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB"
    except (ValueError, OSError):
        memory = ""
    return f"{name} ({vector_isa().upper()}), {os.cpu_count()} cores{memory}"
