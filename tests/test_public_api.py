"""The public API: the names a notebook needs, importable from `dema_lab` and from the package
that owns each, as the same object. Paths inside a package may move; these may not."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import dema_lab

# the package (an __init__, not a module inside it) that exports each public name
BY_PACKAGE = {
    "dema_lab.analysis": ("open_store",),
    "dema_lab.store": ("open_run", "RunStore"),
    "dema_lab.data": ("load_dataset",),
    "dema_lab.models": ("load_checkpoint", "build_model", "ModelConfig", "Policy"),
    "dema_lab.ssm": ("Mamba", "hidden_attention"),
    "dema_lab.training": ("TrainConfig", "train", "evaluate_checkpoint"),
    "dema_lab.integrations": ("import_official",),
}
PUBLIC = {name: package for package, names in BY_PACKAGE.items() for name in names}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_name_comes_from_dema_lab_and_its_package_as_one_object(name):
    package = importlib.import_module(PUBLIC[name])
    assert hasattr(package, "__path__"), f"{PUBLIC[name]} is a module, not a package"
    assert name in package.__all__, f"{PUBLIC[name]}.__all__ lacks {name}"
    assert getattr(dema_lab, name) is getattr(package, name)
    namespace = {}
    exec(f"from dema_lab import {name}", namespace)  # the form a notebook uses
    assert namespace[name] is getattr(package, name)


def test_the_list_is_the_packages_all_and_dir():
    assert set(dema_lab.__all__) == {"__version__", *PUBLIC}
    assert set(PUBLIC) <= set(dir(dema_lab))
    with pytest.raises(AttributeError, match="no attribute 'rollout'"):
        dema_lab.rollout  # noqa: B018 - an old module path is not a public name


def test_import_dema_lab_alone_stays_light():
    code = (
        "import sys, dema_lab\n"
        "heavy = sorted(m for m in ('torch', 'xarray', 'panel', 'holoviews', 'bokeh', 'zarr', 'numba') if m in sys.modules)\n"
        "print(dema_lab.__version__, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[1].strip() == "[]", out.stdout
