"""Theano's set-up: the patches apply only to the Theano they were written for, and a
process that mpiexec did not start never initialises MPI, whatever is installed."""
import json
import os
import resource
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from layers.runtime import patches
from layers.runtime.backend import theano
from models.run.processes import MPI_LAUNCHER_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


def fake_theano(version):
    """An object with the attributes `patches.apply` replaces, and their originals."""
    def method(self, *args, **kwargs):
        return ()

    places = {"cc": "CLinker", "op": "COp", "vm": "VM_Linker", "cmodule": "ModuleCache"}
    gof = types.SimpleNamespace(**{module: types.SimpleNamespace(**{name: type(name, (), {
        "cmodule_key_": method, "cmodule_key": method, "c_code_cache_version": method,
        "make_all": method,
        "module_from_key": method})}) for module, name in places.items()})
    gof.cmodule.GCC_compiler = type("GCC_compiler", (), {"compile_str": staticmethod(method)})
    fake = types.SimpleNamespace(__version__=version, gof=gof, config=types.SimpleNamespace())
    return fake, _patched_attributes(fake)


def _patched_attributes(fake):
    gof = fake.gof
    return (gof.cc.CLinker.cmodule_key_, gof.cc.CLinker.cmodule_key,
            gof.op.COp.c_code_cache_version, gof.vm.VM_Linker.make_all,
            gof.cmodule.ModuleCache.module_from_key, gof.cmodule.GCC_compiler.compile_str)


def test_the_patches_change_nothing_in_another_theano_version():
    fake, originals = fake_theano("1.0.4")
    with pytest.warns(UserWarning, match="written for Theano 1.0.5, not 1.0.4"):
        patches.apply(fake)
    assert _patched_attributes(fake) == originals


def test_the_patches_apply_to_theano_1_0_5():
    fake, originals = fake_theano("1.0.5")
    patches.apply(fake)
    assert all(now is not before for now, before in zip(_patched_attributes(fake), originals))
    assert theano.gof.cc.CLinker.cmodule_key_._iaf_patched  # the real one, on import


def limit_file_size():
    """Child processes may write files of at most 1 MB (as under ``ulimit -f 1024``)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


def test_a_plain_process_does_not_initialise_mpi_even_under_a_file_size_limit():
    pytest.importorskip("mpi4py")
    code = ("import layers.runtime.backend, theano.tensor.io as io; from mpi4py import MPI; "
            "print(io.mpi_enabled, MPI.Is_initialized())")
    env = {k: v for k, v in os.environ.items() if k not in MPI_LAUNCHER_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Theano did import mpi4py's MPI module, and MPI is still not initialised.
    assert proc.stdout.split() == ["True", "False"]


def test_a_functions_missing_c_modules_are_compiled_ahead_by_worker_threads(tmp_path):
    # In a fresh compile folder; g++ runs that compile a module are recorded with the
    # thread that started them.
    code = """if True:
        import json, threading
        import numpy as np
        from layers.runtime.backend import T, theano
        from theano.gof import cmodule
        runs, run = [], cmodule.output_subprocess_Popen
        def recorded(command, *args, **kwargs):
            if any(part.endswith("mod.cpp") for part in command):  # a module, not a check
                runs.append(threading.current_thread() is threading.main_thread())
            return run(command, *args, **kwargs)
        cmodule.output_subprocess_Popen = recorded
        x, y = T.vector(), T.vector()
        theano.function([x], x)  # Theano's own helper modules, compiled once on first use
        del runs[:]
        f = theano.function([x, y], [T.exp(x) + y, T.log(x) * y, T.sqrt(x) - y, x.sum()])
        values = [v.tolist() for v in f(np.array([1, 4], "float32"), np.ones(2, "float32"))]
        print(json.dumps({"main": sum(runs), "workers": len(runs) - sum(runs), "values": values}))
    """
    env = {**os.environ, "THEANO_FLAGS": f"base_compiledir={tmp_path}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["main"] == 0 and result["workers"] >= 4, result
    np.testing.assert_allclose(result["values"][:3], [[np.e + 1, np.exp(4) + 1],
                                                      [0, np.log(4)], [0, 1]], rtol=1e-6)
    assert result["values"][3] == 5


def test_the_processes_of_a_run_are_found_without_importing_theano():
    code = ("import sys; from models.run.processes import Processes; "
            "print(Processes().size, 'theano' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in MPI_LAUNCHER_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "False"]
