"""The packages are one-way layers: each imports only itself and the layers below it.

    wmgym (the CLI)  >  benchmarks  >  train  >  policies, judges  >  wm_env

Every import statement of every module is read (also the ones inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide an arrow that points up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "wm_env": {"wm_env"},
    "policies": {"policies", "wm_env"},
    "judges": {"judges", "wm_env"},
    "train": {"train", "policies", "judges", "wm_env"},
    "benchmarks": {"benchmarks", "train", "policies", "judges", "wm_env"},
    "wmgym": {"wmgym", "benchmarks", "train", "policies", "judges", "wm_env"},
}


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every absolute import in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in ALLOWED}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for target, line in sorted(project_imports(path))
        if target not in ALLOWED[package]
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_the_layer_rule_reads_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from train.loop import OptimConfig\n    import benchmarks.x\n")
    assert project_imports(module) == {("train", 2), ("benchmarks", 3)}


def test_running_a_bundle_loads_no_training_code():
    """The envs, the world model and the registries load without the packages above them."""
    code = (
        "import sys, gymnasium, wm_env, wm_env.world_model, wm_env.envs.world_model_env, "
        "wm_env.envs.vector, policies.registry, judges.registry\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'train', 'benchmarks', 'wmgym'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """import-linter (a dev dependency) on the ``[tool.importlinter]`` contract in ``cwd``."""
    assert LINT_IMPORTS.exists(), "import-linter is a dev dependency: run `make setup`"
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_import_linter_keeps_the_layers_contract():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_the_import_linter_contract_catches_an_import_that_points_up(tmp_path):
    """The project's own contract, on stand-in packages where the runtime imports training."""
    config = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(config[config.index("[tool.importlinter]") :])
    for package in ALLOWED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "wm_env" / "runtime.py").write_text("def f():\n    from train import loop\n")
    (tmp_path / "train" / "loop.py").write_text("")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "wm_env.runtime -> train.loop" in out.stdout
