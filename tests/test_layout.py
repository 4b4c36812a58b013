"""The tree's layers: each folder imports only what its opening comment allows, so the
model's math never reaches into the C ops or Theano plumbing and nothing imports upward."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("layers", "models", "data", "configs", "train")


def _is_module(parts):
    path = ROOT.joinpath(*parts)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path):
    """The modules of this project that ``path`` imports, by absolute name."""
    package = list(path.relative_to(ROOT).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.module else []
            if node.level:
                base = package[:len(package) - node.level + 1] + base
            for alias in node.names:
                parts = base + [alias.name]
                found.add(".".join(parts if _is_module(parts) else base))
    return {name for name in found if name.split(".")[0] in OURS}


# folder -> the modules of ours (besides its own folder's) that its files may import
RULES = {
    "layers/runtime": (),
    "layers/ops": ("layers.runtime.backend",),
    "layers": ("layers.ops", "layers.runtime.backend"),
    "models": ("layers", "layers.conv", "layers.distributions", "layers.iaf", "layers.masked",
               "layers.nonlinearities", "layers.parameters", "layers.ops",
               "layers.runtime.backend", "layers.runtime.function_cache"),
    "models/run": ("models", "models.config", "models.names", "models.resnet_vae",
                   "models.optim", "models.trainer", "data", "layers.runtime.files"),
    "data": (),
}


@pytest.mark.parametrize("folder", list(RULES))
def test_each_folder_imports_only_what_it_may(folder):
    own = folder.replace("/", ".")
    files = sorted((ROOT / folder).glob("*.py"))
    assert len(files) > 1
    for path in files:
        for name in imports(path):
            if name == own or name.rsplit(".", 1)[0] == own:
                continue  # its own folder
            assert name in RULES[folder], (str(path.relative_to(ROOT)), name)
            if name == "layers.runtime.function_cache":  # the compiled side only
                assert path.name == "trainer.py", str(path.relative_to(ROOT))


@pytest.mark.parametrize("folder", list(RULES))
def test_each_folder_says_what_it_holds_and_may_import(folder):
    opening = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text())) or ""
    assert "May import" in opening, folder
