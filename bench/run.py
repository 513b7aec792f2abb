"""Run every benchmark in ``bench/``: each ``bench/*.py`` module (but this one) with a ``main()``.

    python bench/run.py            # all of them
    python bench/run.py sandbox    # only bench/sandbox.py

A benchmark's ``main(argv)`` prints its table, writes ``bench/results/{name}.json`` and returns 0
when it met its targets. This runner exits 1 if any did not (or crashed), so CI can gate on it.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent


def discover(names: list[str]) -> list[Path]:
    found = sorted(
        p for p in BENCH.glob("*.py") if p.name != "run.py" and not p.name.startswith("_")
    )
    if names:
        unknown = set(names) - {p.stem for p in found}
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        found = [p for p in found if p.stem in names]
    return found


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    failed: list[str] = []
    for path in discover(names):
        print(f"== bench/{path.name}")
        try:
            module = load(path)
            if not hasattr(module, "main"):
                continue  # a helper module, not a benchmark
            code = module.main([])
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            failed.append(path.stem)
        print()
    if failed:
        print(f"benchmarks below target: {', '.join(failed)}")
        return 1
    print("every benchmark met its target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
