"""mmseg_hosvd.bench.anatomy: what is live at a step's peak, by group, and
the phase, module and op running then."""
import pytest
import torch
import torch.nn as nn

from mmseg_hosvd.bench.anatomy import peak_anatomy
from mmseg_hosvd.peak_memory import PeakMemoryMeter

pytestmark = pytest.mark.usefixtures('single_thread')

MIB = 2**20


class Wide(nn.Module):
    """A forward whose transient (``width`` float32 copies of its input,
    stacked and summed without grad) dwarfs everything else."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x):
        with torch.no_grad():
            total = torch.stack([x * (i + 1)
                                 for i in range(self.width)]).sum(0)
        return x + total


def model(width=1):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Sequential(Wide(width)), nn.Conv2d(8, 2, 1))


def step_of(net, optimizer, x):
    def step():
        net(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def test_groups_add_up_to_the_meters_peak():
    torch.manual_seed(0)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 32, 32)
    step = step_of(net, optimizer, x)
    step()  # momentum buffers exist
    meter = PeakMemoryMeter('cpu')
    with meter:
        step()
    anatomy = peak_anatomy(step, net, optimizer)
    assert anatomy.peak_bytes == pytest.approx(meter.peak_bytes, rel=0.05)
    assert sum(anatomy.groups.values()) == anatomy.peak_bytes
    assert set(anatomy.as_mib()) == {'peak_mib', 'groups_mib', 'phase',
                                     'module', 'op'}


def test_a_forward_transient_is_found_in_its_module():
    net = model(width=64)  # 64 copies of (2, 8, 64, 64) float32: 16 MiB
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64)
    anatomy = peak_anatomy(step_of(net, optimizer, x), net, optimizer)
    assert anatomy.phase == 'forward'
    assert anatomy.module == '2.0'  # the Wide module, by path
    assert anatomy.peak_bytes > 16 * MIB
    assert (anatomy.groups['activations'] +
            anatomy.groups['op temporaries']) >= 16 * MIB


def test_the_first_adam_step_peaks_in_the_optimizer():
    """Adam's first step creates two state tensors per parameter: with
    a large parameter and a tiny forward, that is the peak."""
    net = nn.Linear(1024, 1024)
    optimizer = torch.optim.Adam(net.parameters(), foreach=False)
    x = torch.randn(1, 1024)
    anatomy = peak_anatomy(step_of(net, optimizer, x), net, optimizer)
    assert anatomy.phase == 'optimizer step'
    assert anatomy.module is None
    assert anatomy.groups['optimizer state'] >= 2 * 4 * 1024 * 1024
    assert anatomy.groups['parameter gradients'] >= 4 * 1024 * 1024
