"""The CamVid daytime -> dusk experiment's pieces (the driver is
``tools/camvid_experiment.py``): config editing (:mod:`.configs`), runs,
evaluation and provenance (:mod:`.runs`), tables and plot
(:mod:`.report`), shared command-line arguments (:mod:`.arguments`)."""
from .arguments import (DEFAULT_DATA, DEFAULT_OUT, add_selection_arguments,
                        resolve_data_root)
from .configs import (DEPTHS, METHODS, MODELS, SMOKE, SPLITS, eval_cfg,
                      finetune_config, pretrain_config, run_cfg, set_data,
                      set_schedule, stem)
from .report import markdown, pareto
from .runs import (dump_json, evaluate, git_commit, load_json, rel, sha256,
                   train)

__all__ = [
    'DEFAULT_DATA', 'DEFAULT_OUT', 'add_selection_arguments',
    'resolve_data_root',
    'DEPTHS', 'METHODS', 'MODELS', 'SMOKE', 'SPLITS', 'eval_cfg',
    'finetune_config', 'pretrain_config', 'run_cfg', 'set_data',
    'set_schedule', 'stem', 'markdown', 'pareto', 'dump_json', 'evaluate',
    'git_commit', 'load_json', 'rel', 'sha256', 'train'
]
