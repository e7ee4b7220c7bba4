"""Test-only: :class:`RankPoisonHook` writes NaN into one pixel of the
batch of one rank at one iteration (after the data preprocessor), imported
through ``custom_imports`` by tests/test_memory_report.py."""
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankPoisonHook(Hook):
    """NaN in the input of rank ``rank`` at 0-based ``iteration``."""

    priority = 'LOWEST'

    def __init__(self, rank: int, iteration: int) -> None:
        self.rank = rank
        self.iteration = iteration
        self.active = False

    def before_train(self, runner) -> None:
        model = runner.model
        model = model.module if is_model_wrapper(model) else model
        model.data_preprocessor.register_forward_hook(self._poison)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.active = (get_rank() == self.rank
                       and runner.iter == self.iteration)

    def _poison(self, module, args, output):
        if self.active and module.training:
            output['inputs'][0, :, 5, 7] = float('nan')
        return output
