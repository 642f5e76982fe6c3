"""scripts/first_updates.py: per-step parameter change of AdamW / GWT / GaLore from one start."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("first_updates", ROOT / "scripts" / "first_updates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_updates_table_and_released_step_one(tmp_path):
    """AdamW moves no entry by more than lr; GWT as released moves some by far more on step 1
    (details divided by sqrt(V) of a single step, times 1/(1 - beta1))."""
    out = tmp_path / "first.md"
    results = load_script().main(["--model", "roberta_tiny", "--task", "rte", "--steps", "2", "--batch-size", "4",
                                  "--max-length", "32", "--layers", "0", "1", "--out", str(out)])
    assert set(results) == {"AdamW", "GWT Haar-2", "GaLore-1/4"}
    lr = 1e-4
    for label, steps in results.items():
        assert len(steps) == 2 and len(steps[0]) == 6, (label, steps)  # 3 weights x 2 layers
    adam_max = max(mx for step in results["AdamW"] for _, mx in step.values())
    assert 0 < adam_max <= lr * (1 + 1e-4)
    gwt_first_max = max(mx for _, mx in results["GWT Haar-2"][0].values())
    assert gwt_first_max > 10 * lr
    text = out.read_text()
    assert text.startswith("Command: `python scripts/first_updates.py --model roberta_tiny")
    assert text.count("\n| 1 |") == 6 and text.count("\n| 2 |") == 6


def test_first_updates_refuses_bad_steps():
    import pytest

    with pytest.raises(SystemExit):
        load_script().parse_args(["--steps", "0"])
