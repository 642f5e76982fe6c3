"""The optimizer library stands alone: `import gwt` and a GWT-AdamW step work in a process where the
experiment stack cannot be imported, and no module of the library imports the harness."""
import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What the library must never need: the experiment stack (extra `train`) and the harness.
BLOCKED = ("hydra", "omegaconf", "accelerate", "wandb", "datasets", "transformers", "matplotlib",
           "submitit", "gwt_lab")

#: Top-level modules the library may import at module level (besides the standard library).
LIBRARY_DEPS = {"torch", "numpy", "pywt", "ptwt", "gwt"}

_CHILD = textwrap.dedent('''
    import importlib.abc, json, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    import gwt
    from gwt import GWTAdamW

    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    results = {}
    for wavelet in ("haar", "db2"):
        for dtype in (torch.float32, torch.float64):  # fp32: C kernel where it builds; fp64: torch/ptwt
            torch.manual_seed(0)
            w = torch.nn.Parameter(torch.randn(6, 20, dtype=dtype))
            start = w.detach().clone()
            opt = GWTAdamW([w], lr=1e-2, wavelet=wavelet, level=2)
            for _ in range(2):
                w.grad = torch.randn_like(w)
                opt.step()
            state = opt.state[w]
            results[f"{wavelet}-{str(dtype)[6:]}"] = {
                "changed": bool((w.detach() != start).any()),
                "finite": bool(torch.isfinite(w).all()),
                "state_shape": list(state["exp_avg"].shape),
            }
    loaded_after = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print(json.dumps({"file": gwt.__file__, "loaded": loaded, "loaded_after": loaded_after,
                      "results": results}))
''')


def test_library_imports_and_steps_with_the_experiment_stack_blocked():
    proc = subprocess.run([sys.executable, "-c", _CHILD, ",".join(BLOCKED)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve() == ROOT / "gwt" / "__init__.py"
    assert report["loaded"] == [], f"importing gwt imported {report['loaded']}"
    assert report["loaded_after"] == [], f"stepping GWTAdamW imported {report['loaded_after']}"
    # Level 2 on rows of 20: Haar keeps 20 / 4 = 5 coefficients, db2 (zero boundary) 20 -> 11 -> 7.
    expected = {"haar": [6, 5], "db2": [6, 7]}
    assert set(report["results"]) == {f"{w}-{d}" for w in expected for d in ("float32", "float64")}
    for key, result in report["results"].items():
        assert result["changed"] and result["finite"], key
        assert result["state_shape"] == expected[key.split("-")[0]], key


def test_the_blocker_in_the_child_really_blocks():
    """The child's finder must make a blocked import fail (else the test above proves nothing)."""
    code = _CHILD.split("import torch")[0] + "import omegaconf\n"
    proc = subprocess.run([sys.executable, "-c", code, "omegaconf"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "omegaconf is blocked in this test" in proc.stderr


def _imports(path: Path):
    """(top-level module name, at module level?) for every import statement of a source file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    in_function = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], id(node) not in in_function


def test_library_sources_import_only_their_dependencies():
    """Module level: the standard library, torch, numpy, pywt, ptwt and gwt itself. Inside functions
    (lazy, for optional integrations and baselines) anything but the harness."""
    sources = sorted((ROOT / "gwt").rglob("*.py"))
    assert ROOT / "gwt" / "optim" / "adamw.py" in sources
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for path in sources:
        for module, at_module_level in _imports(path):
            where = path.relative_to(ROOT)
            if module == "gwt_lab":
                problems.append(f"{where} imports the harness gwt_lab")
            elif at_module_level and module not in stdlib | LIBRARY_DEPS | {"__future__"}:
                problems.append(f"{where} imports {module} at module level")
    assert problems == []


def test_harness_sources_import_no_entrypoint_or_script():
    """The harness (floor 2) never reaches up to the programs built on it."""
    programs = {path.stem for path in ROOT.glob("*.py")} | {"scripts", "tests"}
    assert {"train_llama", "finetune_glue"} <= programs
    sources = sorted((ROOT / "gwt_lab").rglob("*.py"))
    assert ROOT / "gwt_lab" / "__init__.py" in sources
    problems = [f"{path.relative_to(ROOT)} imports {module}" for path in sources
                for module, _ in _imports(path) if module in programs]
    assert problems == []
