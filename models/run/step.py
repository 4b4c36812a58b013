"""One training step of a run over its processes (docs/model.md §10, §11): the step that
train.py's loop, the benchmarks and the tests all take."""
from dataclasses import dataclass

from models.optim import GradientVector

# What each process may ask of the run after a step. The asks travel in the gradient's
# all-reduce, so every process sees their sum after the same step.
VOTES = ("stop", "checkpoint")


class NonFiniteStep(Exception):
    """The step's cost or gradient was not finite; nothing was updated."""


@dataclass
class StepResult:
    cost: float  # the global minibatch's summed cost
    applied: bool  # False: not finite, so nothing was updated (skip_nonfinite=True)
    stop: bool  # some process asked the run to stop after this step
    checkpoint: bool  # ... or to checkpoint after it


class TrainingStep:
    """One AdaMax step on a global minibatch of which this process holds a share: the
    share's gradient, summed over the processes with its cost and the processes' votes,
    then the same update on every process. A sum that is not finite updates nothing and
    raises `NonFiniteStep`, unless ``skip_nonfinite``."""

    def __init__(self, trainer, processes, skip_nonfinite=False):
        self.trainer, self.processes, self.skip_nonfinite = trainer, processes, skip_nonfinite
        self.vector = GradientVector(trainer.state.params, VOTES)  # reused: no allocation a step

    def __call__(self, x, eps, stop=False, checkpoint=False):
        """A step with this process's share ``x`` (possibly empty: a last minibatch too
        small for every process) and its noise ``eps``, and this process's votes."""
        if len(x):
            self.trainer.gradient(x, eps, into=self.vector)
        else:
            self.vector.array[:] = 0
        self.vector["stop"], self.vector["checkpoint"] = stop, checkpoint
        self.processes.sum_(self.vector.array)
        applied = self.trainer.apply_gradient(self.vector)
        if not applied and not self.skip_nonfinite:
            raise NonFiniteStep
        return StepResult(float(self.vector["cost"]), applied, bool(self.vector["stop"]),
                          bool(self.vector["checkpoint"]))
