"""The peak meter on hand-built steps whose peak is counted by hand."""
import warnings

import pytest
import torch
import torch.nn as nn

from mmseg_hosvd.peak_memory import PeakMemoryMeter, running_peak

F32 = 4


def test_running_peak():
    assert running_peak([]) == 0
    assert running_peak([-5, 3]) == 0
    assert running_peak([4, 4, -4, 2, -6]) == 8
    assert running_peak([4, -4, 2, 2, 1]) == 5


def test_temporary_freed_before_the_peak_is_not_double_counted():
    big, small = 1 << 20, 3 << 18  # bytes: 1 MiB and 0.75 MiB
    meter = PeakMemoryMeter('cpu')
    with meter:
        tmp = torch.empty(big, dtype=torch.uint8)
        del tmp
        a = torch.empty(small, dtype=torch.uint8)
        b = torch.empty(small, dtype=torch.uint8)
    # tmp (1 MiB) is gone before a and b (1.5 MiB together) exist
    assert meter.peak_bytes == 2 * small
    assert meter.net_bytes == 2 * small
    assert meter.peak_mib == 1.5
    del a, b


def test_cpu_frees_of_older_memory_are_not_seen():
    """The CPU profiler does not report the free of a block allocated
    before it started: the peak is an upper bound then (documented)."""
    old = torch.empty(1 << 20, dtype=torch.uint8)
    meter = PeakMemoryMeter('cpu')
    with meter:
        del old  # -1 MiB in reality, unseen by the profiler
        new = torch.empty(3 << 18, dtype=torch.uint8)  # +0.75 MiB
        newer = torch.empty(1 << 19, dtype=torch.uint8)  # +0.5 MiB
    assert meter.peak_bytes == meter.net_bytes == (3 << 18) + (1 << 19)
    del new, newer


def conv_relu_conv(batch=2, cin=3, hidden=8, size=16):
    """Two 1x1 convs without bias around a ReLU: with mkldnn off, PyTorch's
    slow path allocates nothing but outputs and gradients for them, so the
    step's allocations can be listed by hand."""
    torch.manual_seed(0)
    conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
    conv2 = nn.Conv2d(hidden, cin, 1, bias=False)
    x = torch.randn(batch, cin, size, size)
    grad_out = torch.randn(batch, cin, size, size)
    return conv1, conv2, x, grad_out


@pytest.fixture
def without_mkldnn():
    """PyTorch's slow convolution path (``mkldnn.flags`` would warn about
    TF32 on this build, so set the switch itself)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def test_conv_relu_conv_step_peak_by_hand(without_mkldnn):
    conv1, conv2, x, grad_out = conv_relu_conv()
    optimizer = torch.optim.SGD([conv1.weight, conv2.weight], lr=0.1)

    def step():
        conv2(torch.relu(conv1(x))).backward(grad_out)
        optimizer.step()

    hid = 2 * 8 * 16 * 16 * F32  # conv1's output, the ReLU's, their grads
    out = 2 * 3 * 16 * 16 * F32  # conv2's output
    wgt = 8 * 3 * F32  # each weight's gradient
    meter = PeakMemoryMeter('cpu')
    with meter:
        step()
    # forward: conv1 out (hid), relu out (hid; conv1's out is freed: the
    # relu saves its output, conv1 its input), conv2 out (out).
    # backward of conv2: grad of relu out (hid), grad of w2 (wgt);
    # backward of relu: grad of conv1 out (hid) -> the peak:
    # relu out + 2 grads + conv2 out + w2's grad
    assert meter.peak_bytes == 3 * hid + out + wgt == 55392
    # after the step only the two weight gradients remain
    assert meter.net_bytes == 2 * wgt
    # the second step accumulates into the existing gradients
    with meter:
        step()
    assert meter.peak_bytes == 3 * hid + out
    assert meter.net_bytes == 0


def test_meter_is_reusable_and_releases_the_profiler():
    meter = PeakMemoryMeter('cpu')
    peaks = []
    for _ in range(3):
        with meter:
            a = torch.ones(1000)
            b = a.exp()
            del a, b
        peaks.append(meter.peak_bytes)
        assert meter.net_bytes == 0
        assert meter._profiler is None
    assert peaks == [8000] * 3


def test_no_warnings_from_the_meter():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with PeakMemoryMeter('cpu'):
            torch.ones(10).sum()


def test_peak_before_the_block_raises():
    with pytest.raises(RuntimeError, match='no peak yet'):
        PeakMemoryMeter('cpu').peak_mib


def test_bad_device():
    with pytest.raises(ValueError, match='cpu or cuda memory, got device '
                       'meta'):
        PeakMemoryMeter('meta')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_peak_of_a_temporary():
    meter = PeakMemoryMeter('cuda')
    keep = torch.empty(1 << 20, dtype=torch.uint8, device='cuda')
    with meter:
        tmp = torch.empty(1 << 22, dtype=torch.uint8, device='cuda')
        del tmp, keep
        a = torch.empty(1 << 21, dtype=torch.uint8, device='cuda')
    assert meter.peak_bytes == 1 << 22
    assert meter.net_bytes == (1 << 21) - (1 << 20)
    del a
