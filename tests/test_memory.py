"""The allocator setting: memory a step frees is reused by the next step instead of being mapped anew."""

import platform
import subprocess
import sys

import pytest

# a training step's pattern: activations of 57 MiB (above glibc's largest mmap threshold) made and freed, step
# after step; the page faults of a step tell whether their memory came from the operating system anew (about 14,000
# faults of 4 KiB per tensor) or was reused. The fewest of steps 2-5, not the last step's: under the parallel suite,
# a last step with memory kept was once seen to fault one tensor's pages anew
SCRIPT = """
import resource, sys, torch
from cifar_lightning import memory
changed = memory.keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.randn(2000, 64, 15, 15).bfloat16()
faults = []
for step in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.gelu(x)
    z = torch.nn.functional.gelu(y)
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(changed, min(faults[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_memory_is_reused_by_the_next_allocation():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        changed, count = out.stdout.split()
        return changed == "True", int(count)

    changed, default = faults("default")
    assert not changed
    changed, kept = faults("keep")
    assert changed and kept * 10 < default  # as it comes, every step's tensors are mapped and zeroed again


@pytest.mark.parametrize("keep", [True, False])
def test_entry_points_keep_freed_memory_unless_a_benchmark_asks_for_the_allocator_as_it_comes(keep, monkeypatch):
    from cifar_lightning import cli, memory

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli, "quiet", lambda: None)
    cli.run_composing(lambda: calls.append("main"), keep_freed_memory=keep)
    assert calls == (["kept", "main"] if keep else ["main"])
