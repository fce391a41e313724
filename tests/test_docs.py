"""What the README documents exists: every `python -m MODULE` it names can be run."""
import importlib.util
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def runnable(name: str) -> str | None:
    """Why `python -m name` would not run a command, or None when it would."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return "no such module"
    if spec.submodule_search_locations:  # a package runs its __main__.py
        return None if Path(spec.origin).with_name("__main__.py").is_file() else "a package without __main__.py"
    return None if "__main__" in Path(spec.origin).read_text() else "a module without a __main__ entry"


def test_every_module_the_readme_runs_exists_and_runs_as_a_script():
    modules = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", README.read_text())) - {"pytest", "venv", "pip"}
    assert {"app", "ablations.run", "ablations.fit", "ablations.evaluate.cleanup"} <= modules
    broken = {name: why for name in sorted(modules) if (why := runnable(name))}
    assert not broken, f"the README runs modules that cannot run: {broken}"
    assert runnable("ablations.evaluate.no_such_study") == "no such module"
    assert runnable("training.heldout") == "a module without a __main__ entry"
