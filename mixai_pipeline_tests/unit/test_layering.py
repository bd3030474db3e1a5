"""``lib/`` is the science and stays usable without Dagster: importing any of it must not import dagster."""

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import mixai_pipeline.lib as lib
names = [m.name for m in pkgutil.walk_packages(lib.__path__, "mixai_pipeline.lib.")
         if not m.name.endswith(".warm")]  # warm runs the science on import (the workers' preload)
for name in names:
    importlib.import_module(name)
    if "dagster" in sys.modules:
        sys.exit(f"importing {name} imported dagster")
print(len(names))
"""


def test_lib_imports_no_dagster():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr or result.stdout
    assert int(result.stdout.strip()) > 50  # every module was imported, not none
