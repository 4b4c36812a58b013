"""What a training run needs beyond the model:

- `start`: the data, the model and its initial or saved weights, for every command.
- `settings`: the run's settings (`RunConfig`, every option of train.py) and their
  reconciliation with a saved run.
- `step`: one training step over the run's processes (gradient, sum, votes, update).
- `resume`: the loop's state, checkpointing and resuming.
- `report`: the progress line, each report's files and line, stopping on a signal.
- `evaluation`: evaluating a set of images over the run's processes.
- `inspection`: the commands that look inside a trained model (per-layer report,
  importance-sampled likelihood, samples, reconstructions).
- The run folder's files: `folder` (the folder and its one writer, log.txt, command.sh,
  config.json),
  `checkpoint`, `weights` (the original's format), `results` (results.txt), `pictures`,
  `plot` (the learning curve).
- `processes`: the processes of an MPI run, or just one, and the checks that they agree.

May import: `models`, `data`, `layers.runtime.files`, numpy, Pillow, matplotlib, mpi4py.
`processes` imports numpy (and, under mpiexec, mpi4py) only, so MPI can be checked
without Theano. Importing the package itself imports nothing.
"""
