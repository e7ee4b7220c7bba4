"""The CamVid daytime -> dusk experiment's pieces (the drivers are
``tools/camvid_experiment.py`` and ``tools/camvid_grad_check.py``): config
editing (:mod:`.configs`), runs, evaluation and provenance (:mod:`.runs`),
the experiment (:mod:`.experiment`), the gradient check
(:mod:`.grad_check`), tables and plot (:mod:`.report`) and the command
lines (:mod:`.arguments`)."""
from .arguments import (DEFAULT_DATA, DEFAULT_OUT, DEFAULT_SMOKE_OUT,
                        add_selection_arguments, experiment_parser,
                        grad_check_parser, parse_experiment_args,
                        parse_grad_check_args, resolve_data_root)
from .configs import (DEPTHS, METHODS, MODELS, SMOKE, SPLITS, TAGS, eval_cfg,
                      finetune_config, pretrain_config, run_cfg, set_data,
                      set_schedule, stem)
from .experiment import Experiment, plan, run_experiment
from .grad_check import (compare, grad_check_markdown, method_gradients,
                         run_grad_check)
from .report import markdown, pareto
from .runs import (dump_json, evaluate, git_commit, load_json, rel, sha256,
                   train)

__all__ = [
    'DEFAULT_DATA', 'DEFAULT_OUT', 'DEFAULT_SMOKE_OUT',
    'add_selection_arguments', 'experiment_parser', 'grad_check_parser',
    'parse_experiment_args', 'parse_grad_check_args', 'resolve_data_root',
    'DEPTHS', 'METHODS', 'MODELS', 'SMOKE', 'SPLITS', 'TAGS', 'eval_cfg',
    'finetune_config', 'pretrain_config', 'run_cfg', 'set_data',
    'set_schedule', 'stem', 'Experiment', 'plan', 'run_experiment',
    'compare', 'grad_check_markdown', 'method_gradients', 'run_grad_check',
    'markdown', 'pareto', 'dump_json', 'evaluate', 'git_commit', 'load_json',
    'rel', 'sha256', 'train'
]
