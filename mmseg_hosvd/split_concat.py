"""Decode heads whose concatenation conv never builds the concatenation
(model surgery).

mmseg's FCNHead (``concat_input=True``), PSPHead, ASPPHead,
DepthwiseSeparableASPPHead, UPerHead and SegformerHead concatenate their
branches along the channels and run one ``ConvModule`` over the result. In a
training step that concatenation (FCN-R18 at batch 8, 512x512: 8 x 1024 x
64 x 64 float32, 128 MiB) and its gradient are among the largest tensors
left once the convs are compressed. Each ``SplitConcat*`` head below is the
mmseg head with the one method that builds the concatenation overridden to
call :func:`~mmseg_hosvd.concat_conv.concat_conv` (the sum of per-branch
convs over slices of the weight; exact up to float rounding, see there).
They add no module or parameter: ``state_dict`` keys and Parameter objects
are the plain head's.

:func:`install_split_concat` sets a head's class to its registered
subclass (as :func:`~mmseg_hosvd.lean_loss.install_lean_loss` does for the
segmentor; :func:`remove_split_concat` sets it back). Not split:
DepthwiseSeparableASPPHead's ``sep_bottleneck`` (a depthwise conv first)
and every other head type; a head whose concatenation conv cannot be split
(:func:`~mmseg_hosvd.concat_conv.split_problem`, e.g. compressed with
``asi``) is left alone, or refused by name when listed explicitly.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from .compat import prepare_mmseg
from .concat_conv import concat_conv, split_problem

prepare_mmseg()  # before mmseg.models (mmcv.ops fallback)

# isort: off
from mmseg.models.decode_heads import (  # noqa: E402
    ASPPHead, DepthwiseSeparableASPPHead, FCNHead, PSPHead, SegformerHead,
    UPerHead)
from mmseg.models.decode_heads.decode_head import (  # noqa: E402
    BaseDecodeHead)
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
# isort: on


@MODELS.register_module()
class SplitConcatFCNHead(FCNHead):
    """``FCNHead`` whose ``conv_cat`` never builds ``cat([x, feats])``."""

    def _forward_feature(self, inputs: List[Tensor]) -> Tensor:
        x = self._transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = concat_conv(self.conv_cat, [x, feats])
        return feats


@MODELS.register_module()
class SplitConcatPSPHead(PSPHead):
    """``PSPHead`` whose ``bottleneck`` never builds the pyramid's cat."""

    def _forward_feature(self, inputs: List[Tensor]) -> Tensor:
        x = self._transform_inputs(inputs)
        return concat_conv(self.bottleneck, [x, *self.psp_modules(x)])


def _aspp_branches(head: ASPPHead, x: Tensor) -> List[Tensor]:
    """The image-pool and ASPP branches that ``ASPPHead`` concatenates."""
    pooled = resize(head.image_pool(x), size=x.size()[2:], mode='bilinear',
                    align_corners=head.align_corners)
    return [pooled, *head.aspp_modules(x)]


@MODELS.register_module()
class SplitConcatASPPHead(ASPPHead):
    """``ASPPHead`` whose ``bottleneck`` never builds the branches' cat."""

    def _forward_feature(self, inputs: List[Tensor]) -> Tensor:
        x = self._transform_inputs(inputs)
        return concat_conv(self.bottleneck, _aspp_branches(self, x))


@MODELS.register_module()
class SplitConcatDepthwiseSeparableASPPHead(DepthwiseSeparableASPPHead):
    """``DepthwiseSeparableASPPHead`` whose ``bottleneck`` never builds the
    ASPP branches' cat (``sep_bottleneck``'s cat with the c1 features
    stays: its first conv is depthwise)."""

    def forward(self, inputs: List[Tensor]) -> Tensor:
        x = self._transform_inputs(inputs)
        output = concat_conv(self.bottleneck, _aspp_branches(self, x))
        if self.c1_bottleneck is not None:
            c1_output = self.c1_bottleneck(inputs[0])
            output = resize(input=output, size=c1_output.shape[2:],
                            mode='bilinear', align_corners=self.align_corners)
            output = torch.cat([output, c1_output], dim=1)
        output = self.sep_bottleneck(output)
        return self.cls_seg(output)


@MODELS.register_module()
class SplitConcatUPerHead(UPerHead):
    """``UPerHead`` whose PSP ``bottleneck`` and ``fpn_bottleneck`` never
    build their cats."""

    def psp_forward(self, inputs: List[Tensor]) -> Tensor:
        x = inputs[-1]
        return concat_conv(self.bottleneck, [x, *self.psp_modules(x)])

    def _forward_feature(self, inputs: List[Tensor]) -> Tensor:
        inputs = self._transform_inputs(inputs)
        laterals = [conv(inputs[i])
                    for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs))
        levels = len(laterals)
        for i in range(levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], size=laterals[i - 1].shape[2:],
                mode='bilinear', align_corners=self.align_corners)
        fpn_outs = [self.fpn_convs[i](laterals[i]) for i in range(levels - 1)]
        fpn_outs.append(laterals[-1])
        for i in range(levels - 1, 0, -1):
            fpn_outs[i] = resize(fpn_outs[i], size=fpn_outs[0].shape[2:],
                                 mode='bilinear',
                                 align_corners=self.align_corners)
        return concat_conv(self.fpn_bottleneck, fpn_outs)


@MODELS.register_module()
class SplitConcatSegformerHead(SegformerHead):
    """``SegformerHead`` whose ``fusion_conv`` never builds the stages'
    cat."""

    def forward(self, inputs: List[Tensor]) -> Tensor:
        inputs = self._transform_inputs(inputs)
        outs = (  # one stage at a time: each freed after its conv
            resize(input=conv(x), size=inputs[0].shape[2:],
                   mode=self.interpolate_mode,
                   align_corners=self.align_corners)
            for x, conv in zip(inputs, self.convs))
        return self.cls_seg(concat_conv(self.fusion_conv, outs))


#: head class -> its split subclass
SPLIT_HEADS = {
    FCNHead: SplitConcatFCNHead,
    PSPHead: SplitConcatPSPHead,
    ASPPHead: SplitConcatASPPHead,
    DepthwiseSeparableASPPHead: SplitConcatDepthwiseSeparableASPPHead,
    UPerHead: SplitConcatUPerHead,
    SegformerHead: SplitConcatSegformerHead,
}
#: head class -> the attributes of its concatenation ConvModules
CONCAT_CONVS = {
    FCNHead: ('conv_cat', ),
    PSPHead: ('bottleneck', ),
    ASPPHead: ('bottleneck', ),
    DepthwiseSeparableASPPHead: ('bottleneck', ),
    UPerHead: ('bottleneck', 'fpn_bottleneck'),
    SegformerHead: ('fusion_conv', ),
}
ORIGINAL_HEADS = {split: head for head, split in SPLIT_HEADS.items()}


@dataclass
class SplitConcat:
    """What :func:`install_split_concat` changed: the split heads' paths,
    and the heads left alone with the reason, by path."""
    split: List[str] = field(default_factory=list)
    left: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = f'split concat: {len(self.split)} head(s)'
        if self.split:
            text += ' (' + ', '.join(self.split) + ')'
        if self.left:
            text += '; left alone: ' + ', '.join(
                f'{path} ({why})' for path, why in self.left.items())
        return text


def unsplittable_reason(head: nn.Module) -> Optional[str]:
    """Why ``head`` cannot be split, or None."""
    name = type(head).__name__
    if type(head) not in SPLIT_HEADS:
        return f'{name}: no split version (supported: ' + ', '.join(
            h.__name__ for h in SPLIT_HEADS) + ')'
    if type(head) is FCNHead and not head.concat_input:
        return 'FCNHead with concat_input=False builds no concatenation'
    for attr in CONCAT_CONVS[type(head)]:
        problem = split_problem(getattr(head, attr))
        if problem is not None:
            return f'{name}.{attr}: {problem}'
    return None


def install_split_concat(model: nn.Module,
                         heads: Union[bool, Sequence[str]] = True
                         ) -> SplitConcat:
    """Split the concatenation convs of ``model``'s decode heads.

    Args:
        model: the (unwrapped) segmentor, after any compression surgery.
        heads: ``True``: every ``BaseDecodeHead`` in ``model`` that can be
            split (the others are left alone, listed in
            :attr:`SplitConcat.left`); ``False``: none; a list of head
            module paths: those, each of which must be splittable.

    Raises:
        ValueError: a listed path that is no decode head or cannot be
            split, naming it and why.
    """
    done = SplitConcat()
    if heads is False:
        return done
    if heads is True:
        found = [(path, module) for path, module in model.named_modules()
                 if isinstance(module, BaseDecodeHead)]
    else:
        found = []
        for path in heads:
            try:
                found.append((path, model.get_submodule(path)))
            except AttributeError:
                raise ValueError(f'split_concat: no module {path!r}') \
                    from None
    for path, head in found:
        if type(head) in ORIGINAL_HEADS:  # e.g. built from a config
            done.left[path] = f'{type(head).__name__} is split already'
            continue
        reason = unsplittable_reason(head)
        if reason is not None and heads is not True:
            raise ValueError(f'split_concat: cannot split {path!r}: '
                             f'{reason}')
        if reason is not None:
            done.left[path] = reason
            continue
        head.__class__ = SPLIT_HEADS[type(head)]
        done.split.append(path)
    return done


def remove_split_concat(model: nn.Module, done: SplitConcat) -> None:
    """Undo :func:`install_split_concat`: the heads' original classes."""
    for path in done.split:
        head = model.get_submodule(path)
        if type(head) in ORIGINAL_HEADS:
            head.__class__ = ORIGINAL_HEADS[type(head)]
    done.split = []
