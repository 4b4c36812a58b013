"""The IAF ResNet VAE, composed from the building blocks in `layers`:

- `config`: every model option with its default and checks (`ModelConfig`, ``margs``).
- `resnet_vae`: the model as a graph (`ResNetVAE`): what is computed (docs/model.md §7, §8).
- `vae_layer`: one stochastic layer (`VAELayer`) and its channel layout (§5).
- `posteriors`: each kind of posterior and prior as a small object (§6).
- `names`: parameter names, and what they say about a model's options.
- `optim`: AdaMax with Polyak averaging over flat buffers (§10); `noise`: every random
  draw as a function of its place (§9).
- `state`: what training changes and keeps (`TrainingState`): parameters, their
  averages and the optimiser's moments, and their values in and out (weights, checkpoints).
- `trainer`: the compiled side (`Trainer`): the functions that train, evaluate and sample
  over a `TrainingState`, kept in the function cache.

Subfolder `run`: what a training run needs beyond the model (its files, processes,
resume and the inspection commands).

May import: `layers` (its building blocks, `layers.ops`' public functions,
`layers.runtime.backend` and, in `trainer` only, `layers.runtime.function_cache`), numpy.
Nothing here imports `models.run`. Importing the package itself imports nothing.
"""
