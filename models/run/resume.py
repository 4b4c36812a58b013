"""The training loop's state: the checkpoint that stops a run and the resume that continues
it exactly."""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .results import trim_results
from .settings import resumed_settings


@dataclass
class LoopState:
    """Everything the training loop carries from step to step; a checkpoint saves and
    restores it whole. Minibatch order and noise are functions of the seed and of these
    counters (docs/model.md §9), so no random generator state is kept."""
    epoch: int = 0  # the epoch under way
    images_done: int = 0  # images of this epoch's order trained on so far
    steps: int = 0  # training steps taken since the run began (the metrics' step)
    cost_sum: float = 0.0  # their summed training cost
    skipped: int = 0  # non-finite steps skipped (skip_nonfinite=True)
    best: Optional[float] = None  # best test cost so far
    history: dict = field(default_factory=lambda: {"train": [], "test": [], "kl": []})


def save_run(folder, cfg, state, trainer, processes):
    """Checkpoint the run, once every rank is seen to hold the same parameters."""
    processes.check_same_parameters(trainer.state.params.buffer)
    if processes.is_main:
        meta = {"config": cfg.as_dict(), "loop": dataclasses.asdict(state)}
        save_checkpoint(folder, trainer.state.arrays(), meta)
    processes.broadcast(None)  # no rank goes on, or ends, before it is written


def saved_run(folder, cfg, sacred_run, processes):
    """``(settings, loop state, arrays)`` of the run in ``folder`` as its checkpoint left
    it, with the settings a resumed run may change taken from ``cfg``; rank 0 reads the
    checkpoint (other ranks, which may run on machines without the folder, get None for
    the arrays: `restore_training_state` sends them)."""
    arrays, meta = load_checkpoint(folder) if processes.is_main else (None, None)
    meta = processes.broadcast(meta)
    cfg = resumed_settings(meta["config"], cfg, sacred_run, folder)
    return cfg, LoopState(**meta["loop"]), arrays


def restore_training_state(trainer, arrays, folder, state, processes):
    """Put rank 0's checkpoint ``arrays`` into every rank's trainer and forget the reports
    the checkpoint does not know of."""
    if processes.is_main:
        try:
            trainer.state.set_arrays(arrays)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint in {folder} does not fit its own config's "
                                  f"model ({err}): a damaged file?") from None
    values = trainer.state.arrays()  # rank 0's, sent to the others
    for name in sorted(values):
        processes.broadcast_(values[name])
    if not processes.is_main:
        trainer.state.set_arrays(values)
    if processes.is_main:
        trim_results(folder, {epoch for epoch, _ in state.history["test"]})
    print(f"Resuming {folder} at epoch {state.epoch}, image {state.images_done}")
