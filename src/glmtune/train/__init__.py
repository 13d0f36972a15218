"""Everything only training uses: the recipe, the loop, tracking, the tasks, the techniques, the search.

``glmtune.train.run(cfg, output)`` is the entry point; nothing outside ``glmtune.cli`` imports this package
(the import contract checks it).
"""

from glmtune.train.loop import TrainerState, build_optimizer, reset_process_state
from glmtune.train.recipe import default_output, run

__all__ = ["TrainerState", "build_optimizer", "default_output", "reset_process_state", "run"]
