"""The memory benchmark (tools/benchmark_memory.py, run through
:mod:`mmseg_hosvd.bench.memory`) on a tiny FCN-5L run, checked against figures
computed by hand from the architecture and the formulas of
docs/paper_setup.md."""
import json
import math
import re
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS, REPO
from mmseg_hosvd.bench import (MEMORY_METHODS, MODEL_CONFIGS, SETUPS,
                               TrainingStep, dataset_config,
                               leaf_config_path)
from mmseg_hosvd.bench.memory import (load_row_config, parse_memory_args,
                                      run_memory_benchmark)
from mmseg_hosvd.bench.report import markdown_table
from mmseg_hosvd.bench.rows import config_method


def leaf_config(model, setup, method, eps):
    return leaf_config_path(CONFIGS, model, setup, method, eps)


def benchmark(argv):
    """What ``tools/benchmark_memory.py ARGV`` runs: its records."""
    return run_memory_benchmark(parse_memory_args(argv), CONFIGS, REPO)


def compact(table: str) -> str:
    """The table with runs of spaces (tabulate's padding) as one."""
    return re.sub(' +', ' ', table)

MIB = 2**20
F32 = 4
B, CROP = 2, 64
H = W = CROP // 8  # FCN-R18-d8: output stride 8 (stem 4, layer2 2)
LOGITS = B * 21 * CROP * CROP * F32  # log-softmax output, 21 classes

#: FCN 5L: the counted convs and their input channels at H/8 x W/8:
#: layer4.1 (a BasicBlock: conv1 and conv2, 512 in), FCNHead convs.0 (512,
#: the backbone output), convs.1 (128), conv_cat (512 + 128: concat_input)
FCN_5L_INPUTS = {
    'backbone.layer4.1.conv1': 512,
    'backbone.layer4.1.conv2': 512,
    'decode_head.convs.0.conv': 512,
    'decode_head.convs.1.conv': 128,
    'decode_head.conv_cat.conv': 512 + 128,
}
#: dilation of each (ResNetV1c-18 d8: layer4 dilation 4 on conv1 only)
FCN_5L_DILATION = {
    'backbone.layer4.1.conv1': 4,
    'backbone.layer4.1.conv2': 1,
    'decode_head.convs.0.conv': 1,
    'decode_head.convs.1.conv': 1,
    'decode_head.conv_cat.conv': 1,
}
FCN_5L_OUT = 128  # every counted conv outputs 128 channels except layer4
ARGS = [
    '--models', 'fcn', '--setups', '5L', '--methods', 'vanilla',
    'gradient_filter', 'hosvd', '--eps', '0.8', '--batch-size',
    str(B), '--crop',
    str(CROP),
    str(CROP), '--iters', '2', '--device', 'cpu', '--lean-backward', 'off',
    'exact'
]


def config_radii():
    """Gradient Filter radius of each counted conv, from the 5L config."""
    cfg = Config.fromfile(
        osp.join(CONFIGS, 'fcn',
                 'fcn_r18-d8_5l-gradient-filter_1xb8-20k_voc12aug-512x512.py'))
    radii = {}
    for entry in cfg.default_hooks.compression.layers:
        path = entry['path']
        if path.startswith('backbone.layer'):  # a BasicBlock
            radii[f'{path}.conv1'] = radii[f'{path}.conv2'] = entry['radius']
        else:  # a ConvModule
            radii[f'{path}.conv'] = entry['radius']
    assert set(radii) == set(FCN_5L_INPUTS)
    return radii


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('benchmark_memory'))
    records = benchmark(ARGS + ['--out', out])
    with open(osp.join(out, 'results.json')) as f:
        saved = json.load(f)
    return out, {r['method']: r for r in saved
                 if r['lean_backward'] == 'off'}, records


@pytest.fixture(scope='module')
def lean_run(run):
    """The same combinations with ``lean_backward='exact'``."""
    out, _, _ = run
    with open(osp.join(out, 'results.json')) as f:
        saved = json.load(f)
    return {r['method']: r for r in saved if r['lean_backward'] == 'exact'}


def test_outputs_written(run, capsys):
    out, by_method, records = run
    assert list(by_method) == ['vanilla', 'gradient_filter', 'hosvd']
    assert len(records) == 6
    assert [r['lean_backward'] for r in records] == ['off', 'exact'] * 3
    for name in ('results.json', 'results.csv', 'memory.png'):
        assert osp.getsize(osp.join(out, name)) > 0
    with open(osp.join(out, 'memory.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(osp.join(out, 'results.csv')) as f:
        lines = f.read().splitlines()
    assert len(lines) == 7
    header = lines[0].split(',')
    for key in ('model', 'setup', 'method', 'eps', 'activation_mib_mean',
                'activation_mib_peak', 'kept_mib_mean', 'step_saved_mib_mean',
                'step_time_s_median', 'ranks', 'step_saved_mib_relu',
                'lean_backward', 'step_saved_mib_relu_mask'):
        assert key in header
    record = by_method['hosvd']
    for key in ('model', 'setup', 'method', 'eps', 'activation_mib_mean',
                'activation_mib_peak', 'kept_mib_mean',
                'step_saved_mib_mean', 'step_time_s_median', 'ranks',
                'forward_time_s_median', 'backward_time_s_median',
                'optimizer_time_s_median', 'breakdown', 'device', 'init',
                'batch', 'crop', 'iters'):
        assert key in record
    assert (record['model'], record['setup'], record['eps']) == ('fcn', '5L',
                                                                 0.8)
    assert by_method['vanilla']['eps'] is None
    assert record['init'] == 'random' and record['data'] == 'synthetic'
    assert (record['device'], record['batch'], record['crop'],
            record['iters']) == ('cpu', B, [CROP, CROP], 2)
    assert record['cuda_peak_mib'] is None
    assert record['step_time_s_median'] > 0


def test_every_row_has_a_measured_step_peak(run):
    out, _, records = run
    with open(osp.join(out, 'results.csv')) as f:
        header = f.readline().strip().split(',')
    assert 'step_peak_mib' in header
    for record in records:
        # the whole step's peak: above what autograd saves, and at least
        # the trainable parameters' float32 gradients
        assert record['step_peak_mib'] > record['step_saved_mib_mean']
        assert record['step_peak_mib'] * MIB >= F32 * record[
            'trainable_params']
        # the whole batch in one step, beside plain no-grad inference of it
        assert record['micro_batch'] == B
        assert record['accumulative_counts'] == 1
        assert 0 < record['floor_mib'] < record['step_peak_mib']
        assert record['peak_over_floor'] == pytest.approx(
            record['step_peak_mib'] / record['floor_mib'])


def test_layers_and_shapes_match_the_architecture(run):
    _, by_method, _ = run
    for record in by_method.values():
        shapes = {p: l['input_shape'] for p, l in record['layers'].items()}
        assert shapes == {
            p: [B, c, H, W]
            for p, c in FCN_5L_INPUTS.items()
        }


def test_vanilla_is_the_paper_count_by_hand(run):
    _, by_method, _ = run
    record = by_method['vanilla']
    expected = sum(B * c * H * W * F32
                   for c in FCN_5L_INPUTS.values()) / MIB
    assert expected == 1.125
    assert record['activation_mib_mean'] == pytest.approx(expected)
    assert record['activation_mib_peak'] == pytest.approx(expected)
    # each counted input has its own storage of exactly that size
    assert record['kept_mib_mean'] == pytest.approx(expected)
    assert all(r == {'last': [], 'mean': []}
               for r in record['ranks'].values())


def test_gradient_filter_is_the_paper_count_by_hand(run):
    _, by_method, _ = run
    record = by_method['gradient_filter']
    radii = config_radii()
    expected = sum(B * c * math.ceil(H / radii[p]) * math.ceil(W / radii[p])
                   * F32 for p, c in FCN_5L_INPUTS.items()) / MIB
    assert expected == pytest.approx(0.0703125)  # radius 4: 2x2 patches
    assert record['activation_mib_mean'] == pytest.approx(expected)
    assert record['activation_mib_peak'] == pytest.approx(expected)
    assert record['kept_mib_mean'] == pytest.approx(expected)


def test_hosvd_is_the_paper_formula_of_its_ranks(run):
    _, by_method, _ = run
    record = by_method['hosvd']
    total = 0
    for path, channels in FCN_5L_INPUTS.items():
        k1, k2, k3, k4 = record['ranks'][path]['last']
        assert 1 <= k1 <= B and 1 <= k2 <= channels
        assert 1 <= k3 <= H and 1 <= k4 <= W
        elements = (k1 * k2 * k3 * k4 + B * k1 + channels * k2 + H * k3 +
                    W * k4)
        layer_mib = elements * F32 / MIB
        assert record['layers'][path]['paper_mib_last'] == pytest.approx(
            layer_mib)
        total += layer_mib
        assert len(record['ranks'][path]['mean']) == 4
    assert record['activation_mib_last'] == pytest.approx(total)
    assert record['activation_mib_peak'] >= record['activation_mib_mean']
    assert record['activation_mib_mean'] < by_method['vanilla'][
        'activation_mib_mean']


def test_whole_step_breakdown_by_hand(run):
    """What autograd saves for the step, by the op that saved it first.

    Trainable: layer4.1 and the head (BN eval). A ReLU output that the next
    conv also saves counts as a ReLU output; layer4.1.conv1's input (the
    frozen layer4.0's output, saved by nobody else) and conv_cat's input (a
    concatenation) count as conv inputs.
    """
    _, by_method, _ = run
    big, small = B * 512 * H * W * F32, B * 128 * H * W * F32
    bn = 2 * big + 3 * small  # bn1, bn2 of layer4.1; 3 head ConvModules
    relu = 2 * big + 3 * small  # same outputs (in-place ReLU)
    loss = LOGITS + B * CROP * CROP * 8 + F32  # log-softmax, int64 target,
    # total weight
    vanilla_conv = big + B * 640 * H * W * F32

    vanilla = by_method['vanilla']['step_saved_groups_mib']
    assert vanilla['conv'] == pytest.approx(vanilla_conv / MIB)
    assert vanilla['bn'] == pytest.approx(bn / MIB)
    assert vanilla['relu'] == pytest.approx(relu / MIB)
    assert vanilla['loss'] == pytest.approx(loss / MIB)
    assert vanilla['compressed'] == vanilla['weight_sums'] == 0
    assert by_method['vanilla']['step_saved_mib_mean'] == pytest.approx(
        (vanilla_conv + bn + relu + loss) / MIB, abs=1e-5)

    hosvd = by_method['hosvd']
    groups = hosvd['step_saved_groups_mib']
    # no plain conv saves anything of its own (conv_seg's input is a ReLU
    # output); the factors are what the compressed layers keep
    assert groups['conv'] == 0
    assert groups['bn'] == pytest.approx(bn / MIB)
    assert groups['relu'] == pytest.approx(relu / MIB)
    assert groups['compressed'] == pytest.approx(hosvd['kept_mib_mean'])
    assert groups['weight_sums'] == 0  # HOSVD saves the Parameter itself

    gf = by_method['gradient_filter']
    groups = gf['step_saved_groups_mib']
    assert groups['compressed'] == pytest.approx(gf['kept_mib_mean'])
    # kernel-summed weights (Cout, Cin), except where dilation >= radius
    # (layer4.1.conv1: dilation 4, radius 4) which keeps the Parameter
    radii = config_radii()
    sums = 0
    for path, channels in FCN_5L_INPUTS.items():
        if FCN_5L_DILATION[path] >= radii[path] and FCN_5L_DILATION[path] > 1:
            continue
        out = 512 if path.startswith('backbone') else FCN_5L_OUT
        sums += out * channels * F32
    assert sums / MIB == pytest.approx(1.625)
    assert groups['weight_sums'] == pytest.approx(sums / MIB)

    for record in by_method.values():
        # the groups partition the graph's activations; the meter agrees
        # up to wrapped Python scalars (a few bytes)
        assert sum(record['step_saved_groups_mib'].values()) == \
            pytest.approx(record['step_saved_mib_mean'], abs=1e-4)
        assert abs(record['step_not_in_graph_mib_mean']) < 1e-4
        # trainable weights are saved, but reported apart
        assert record['step_saved_param_mib_mean'] > 0
        assert record['step_saved_mib_mean'] >= record['kept_mib_mean']


def test_lean_backward_breakdown_by_hand(run, lean_run):
    """lean_backward='exact' on the same steps: ReLUs keep 1-bit masks; the
    BatchNorms of the trainable tail train (their whole block is unfrozen)
    after compressed convs, so they keep their inputs (folding them would
    change their gradients); with vanilla they would fold, but here the
    folded weights (128x640x3x3 ...) are larger than their outputs, so they
    do not. Paper counts and ranks' memory are unchanged."""
    _, by_method, _ = run
    big, small = B * 512 * H * W * F32, B * 128 * H * W * F32
    bn = 2 * big + 3 * small
    masks = (2 * big + 3 * small) // F32 // 8  # one bit per element
    for method, record in lean_run.items():
        off = by_method[method]
        groups = record['step_saved_groups_mib']
        assert groups['relu'] == 0
        assert groups['relu_mask'] == pytest.approx(masks / MIB)
        assert groups['bn'] == pytest.approx(bn / MIB)
        assert groups['loss'] == pytest.approx(
            off['step_saved_groups_mib']['loss'])
        assert record['activation_mib_mean'] == pytest.approx(
            off['activation_mib_mean'])
        assert record['step_saved_mib_mean'] < off['step_saved_mib_mean']
    hosvd = lean_run['hosvd']['step_saved_groups_mib']
    # conv_seg's input (conv_cat's ReLU output) is now its own saving
    assert hosvd['conv'] == pytest.approx(small / MIB)
    # the ReLU outputs (kept whole before) become masks; nothing else moves
    saving = by_method['hosvd']['step_saved_mib_mean'] - lean_run['hosvd'][
        'step_saved_mib_mean']
    assert saving == pytest.approx((2 * big + 3 * small - small - masks) /
                                   MIB, rel=1e-3)


def test_markdown_table(run):
    _, _, records = run
    table = compact(markdown_table(records))
    lines = table.splitlines()
    assert len(lines) == 2 + 6
    assert '| fcn | 5L | hosvd eps=0.8, lean exact |' in table
    assert lines[0].startswith('| model | setup | method | paper MiB mean')
    assert '| fcn | 5L | hosvd eps=0.8 |' in table
    assert '| fcn | 5L | vanilla | 1.12 | 1.12 | 1.12 |' in table


@pytest.mark.parametrize('argv, message', [
    (['--models', 'resnet'], "invalid choice: 'resnet'"),
    (['--methods', 'lora'], "invalid choice: 'lora'"),
    (['--setups', '20L'], "invalid choice: '20L'"),
    (['--eps', '1.5'], "eps must be in (0, 1], got '1.5'"),
    (['--eps', '0'], "eps must be in (0, 1], got '0'"),
    (['--eps', 'nan'], "eps must be in (0, 1], got 'nan'"),
    (['--iters', '0'], "expected an integer >= 1, got '0'"),
    (['--data-root', '/nonexistent/voc'],
     "--data-root '/nonexistent/voc' does not exist"),
    (['--checkpoint', '/nonexistent/x.pth'],
     "--checkpoint '/nonexistent/x.pth' does not exist"),
    (['--batch-size', '8', '--micro-batch', '2', '3'],
     '--micro-batch [3]: must divide --batch-size 8'),
    (['--micro-batch', '0'], "expected an integer >= 1, got '0'"),
    (['--hook-option', 'split=True'], "expected KEY=VALUE with KEY one of"),
    (['--hook-option', 'frozen_chunk=one'], "frozen_chunk: 'one' is not a "
     'Python literal'),
])
def test_bad_arguments_name_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        parse_memory_args(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_leaf_configs_and_eps_override():
    path, override = leaf_config('fcn', '10L', 'svd', 0.9)
    assert path.endswith(
        'configs/fcn/fcn_r18-d8_10l-svd-eps0.9_1xb8-20k_voc12aug-512x512.py')
    assert override is None
    path, override = leaf_config('pspnet-m', '5L', 'hosvd', 0.85)
    assert path.endswith('configs/mobilenet_v2/mobilenet-v2-d8_pspnet_5l-'
                         'hosvd-eps0.8_1xb8-20k_voc12aug-512x512.py')
    assert override == 0.85
    for model in MODEL_CONFIGS:
        for setup in SETUPS:
            for method in MEMORY_METHODS:
                path, _ = leaf_config(model, setup,
                                      config_method(method), 0.8)
                assert osp.isfile(path), path
    cfg, _ = load_row_config(CONFIGS, 'upernet', '10L', 'hosvd', 0.85,
                             (32, 48))
    assert cfg.default_hooks.compression.method == 'hosvd'
    assert cfg.default_hooks.compression.eps == 0.85
    assert tuple(cfg.model.data_preprocessor.size) == (32, 48)


def test_checkpoint_and_data_root(tmp_path, tiny_voc):
    """A weights-only checkpoint and a VOC tree through the config's own
    train pipeline (the tree has no SBD aug split: that part is skipped)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg, _ = load_row_config(CONFIGS, 'fcn', '5L', 'vanilla', None,
                             (CROP, CROP))
    torch.manual_seed(1)
    state = MODELS.build(cfg.model).state_dict()
    checkpoint = str(tmp_path / 'fcn.pth')
    torch.save(dict(state_dict=state, meta=dict(note='test')), checkpoint)

    model = TrainingStep.from_config(cfg, 'cpu', checkpoint=checkpoint,
                                     init_weights=False).model
    key = 'decode_head.conv_cat.conv.weight'
    assert torch.equal(model.state_dict()[key], state[key])

    dataset = dataset_config(cfg, tiny_voc, (CROP, CROP))
    assert dataset['type'] == 'PascalVOCDataset'
    assert dataset['ann_file'] == 'ImageSets/Segmentation/train.txt'
    crop = [t for t in dataset['pipeline'] if t['type'] == 'RandomCrop']
    assert crop[0]['crop_size'] == (CROP, CROP)

    out = str(tmp_path / 'out')
    (record, ) = benchmark([
        '--models', 'fcn', '--setups', '5L', '--methods', 'vanilla',
        '--batch-size',
        str(B), '--crop',
        str(CROP),
        str(CROP), '--iters', '1', '--device', 'cpu', '--checkpoint',
        checkpoint, '--data-root', tiny_voc, '--out', out
    ])
    assert record['init'] == checkpoint and record['data'] == tiny_voc
    assert record['activation_mib_mean'] == pytest.approx(1.125)

