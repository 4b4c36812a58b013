"""The Theano runtime the model runs on, kept apart from the model's math.

- `backend`: Theano configured before its first import (float32, the OpenBLAS wheel,
  OpenMP, a compile folder of our own), then re-exported; every module of this project
  that uses Theano imports it from here.
- `patches`: fixes to Theano 1.0.5 (its C-module cache, C modules compiled on all cores,
  MPI left uninitialised by its import), applied by `backend`.
- `function_cache`: compiled functions kept on disk and loaded only from trusted files.
- `files`: crash-safe file writes, for the function cache and a run's files.

May import: the standard library, numpy and Theano; nothing else of this project.
Importing the package itself imports nothing, so `files` can be used without Theano.
"""
