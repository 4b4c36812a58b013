"""The building blocks of the IAF ResNet VAE, as plain math (docs/model.md §2-§4, §6, §8):
weight-normalised convolutions (`conv`), masked convolutions (`masked`), IAF networks
(`iaf`), log-densities (`distributions`), nonlinearities (`nonlinearities`) and the
parameters in one flat buffer (`parameters`).

A layer is a small object: its constructor puts the initial values of its parameters
into the model's ``name -> array`` dict; calling it with an input and a dict of symbolic
parameters applies it.

Subfolders, which the model's math does not need to be read: `ops` (the C ops that run
it fast, each with its plain-Theano twin) and `runtime` (Theano's configuration, patches
and the compiled-function cache).

May import: `layers.ops` (its public functions only), `layers.runtime.backend` (Theano),
numpy. Importing the package itself imports nothing.
"""
