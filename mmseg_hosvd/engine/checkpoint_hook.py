from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .weights_only import from_weights_only, to_weights_only


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that ``torch.load(weights_only=True)`` can read.

    mmengine's resume checkpoints keep ``HistoryBuffer`` objects and numpy
    arrays in ``message_hub`` and ``meta``; under torch >= 2.6 (whose
    ``torch.load`` defaults to ``weights_only=True``) ``--resume`` then fails.
    This hook stores them as tagged dicts of tensors before saving and
    rebuilds them right after loading, so both ``load_from`` and
    ``--resume`` go through the restricted unpickler: a downloaded file can
    never run code on load. ``state_dict`` is left untouched, so the file is
    an ordinary MMSegmentation checkpoint.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store every entry but ``state_dict`` as tensors and numbers.

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The checkpoint about to be saved.
        """
        for key in checkpoint:
            if key != 'state_dict':
                checkpoint[key] = to_weights_only(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Rebuild the entries stored by :meth:`before_save_checkpoint`.

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The loaded checkpoint.
        """
        for key in checkpoint:
            if key != 'state_dict':
                checkpoint[key] = from_weights_only(checkpoint[key])
