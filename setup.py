"""Install: ``pip install -e .`` (Python 3.8-3.11; Theano 1.0.5 imports distutils).

Pins that work together: Theano 1.0.5 needs numpy < 1.24 (it uses ``np.bool``), so numpy
1.23.5. BLAS comes from the ``scipy-openblas32`` wheel (see layers/runtime/backend.py). scipy is
not needed: we only use Theano's compiled C modes; its Python-mode convolution would need
an old scipy (``pip install scipy==1.10.1``) and is never selected by this code.
Figures use matplotlib and Pillow. matplotlib 3.11 requires numpy >= 1.25, so it is excluded
explicitly (<3.11) rather than left for pip to discover by backtracking; 3.7-3.10 accept
numpy 1.23 and between them cover Python 3.8-3.11. The convolutions run on oneDNN 3.2 from
the ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` wheels (library and headers, built on
GNU OpenMP as our other ops are; layers/ops/onednn.py finds them in the environment); the
newer ``onednn`` wheel would also need the SYCL and TBB runtimes.
"""
from setuptools import setup

setup(
    name="iaf-theano",
    version="0.1.0",
    description="Faithful Python 3 reproduction of 'Improving Variational Inference with "
                "Inverse Autoregressive Flow' (Kingma et al. 2016), in Theano, on the CPU",
    python_requires=">=3.8,<3.12",
    packages=["layers", "layers.ops", "layers.runtime", "models", "models.run", "data",
              "configs"],
    package_data={"layers.ops": ["*.cpp"]},
    py_modules=["train"],
    install_requires=[
        "numpy==1.23.5",
        "Theano==1.0.5",
        "scipy-openblas32>=0.3.27",
        "sacred==0.8.7",
        "six>=1.16",
        "matplotlib>=3.7,<3.11",
        "Pillow>=9",
        # oneDNN 3.2 on GNU OpenMP (the runtime of our other ops): library and headers.
        "onednn-cpu-gomp==2023.2.0",
        "onednn-devel-cpu-gomp==2023.2.0",
    ],
    # MPI from wheels: mpi4py and MPICH, whose mpiexec passes SIGINT/SIGTERM on to every
    # rank and waits for them (README, "Many processes").
    extras_require={"test": ["pytest>=7"], "mpi": ["mpi4py>=4", "mpich"]},
)
