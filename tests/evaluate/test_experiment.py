import json

import pytest
import torch
import yaml

from mergekit_het.errors import ConfigError
from mergekit_het.evaluate.config import load_compare_config
from mergekit_het.evaluate.experiment import run_comparison
from mergekit_het.evaluate.report import write_comparison
from mergekit_het.evaluate.metrics import disagreement


def _config(tmp_path, task_file, base, experts, **extra):
    raw = {"tasks": str(task_file), "base": str(base), "experts": {t: str(p) for t, p in experts.items()},
           "device": "cpu", "batch_size": 8, **extra}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_comparison_known_answers(tmp_path, task_file, base, experts):
    cfg = load_compare_config(_config(
        tmp_path, task_file, base, experts,
        methods=[{"name": "ta", "method": "task_arithmetic", "parameters": {"normalize": False},
                  "grid": {"lambda": [0.0, 0.5, 1.0]}},
                 {"name": "avg", "method": "linear"}],
        cross_task={"alpha": 1.0},
        disentanglement={"tasks": ["pair", "triple"], "alphas": [0.0, 1.0], "max_examples": 12}))
    c = run_comparison(cfg)
    # experts on their own task: normalized accuracy exactly 1
    assert c.experts.normalized == {"pair": 1.0, "triple": 1.0}
    # the sweep reports the validation argmax, and test metrics of exactly that merge
    ta = c.methods[0]
    assert ta.params["lambda"] == max(ta.sweep.points, key=lambda p: p.score).params["lambda"]
    assert ta.sweep.best.score == max(p.score for p in ta.sweep.points)
    # cross-task matrix at alpha 1: rows are the experts, base row is the base model
    ct = c.cross_task
    assert ct.base == [c.base.scores[t].accuracy for t in c.tasks]
    assert [ct.accuracy[i][i] for i in range(2)] == [c.experts.scores[t].accuracy for t in c.tasks]
    assert ct.normalized[0][1] == pytest.approx(ct.accuracy[0][1] / ct.base[1])
    # disentanglement: xi(0, 0) = 0
    d = c.disentanglement
    assert d.errors[0][0] == 0.0 and len(d.errors) == 2 and len(d.errors[0]) == 2

    out = write_comparison(c, tmp_path / "out")
    data = json.loads((out / "results.json").read_text())
    assert data["models"]["ta"]["params"]["lambda"] == ta.params["lambda"]
    assert data["models"]["experts (each on its task)"]["normalized_accuracy"] == 1.0
    for png in ("normalized_accuracy.png", "sweep_ta.png", "cross_task.png", "disentanglement.png"):
        assert (out / png).stat().st_size > 1000
    assert "| ta |" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        write_comparison(c, tmp_path / "out")


def test_disentanglement_alpha1_zero_is_disagreement_of_base_and_tau1_on_task2(tmp_path, task_file, base, experts):
    from transformers import BertModel

    from mergekit_het.evaluate.interference import disentanglement_grid
    from mergekit_het.evaluate.runner import load_model, predict
    from mergekit_het.evaluate.data import encode_split
    from mergekit_het.models.encoder import load_tokenizer
    from mergekit_het.data.tasks import load_task_file

    tasks = load_task_file(task_file)
    model = load_model(base, tasks, experts)
    tok = load_tokenizer(base)
    data = [encode_split(t, "test", tok, batch_size=8) for t in tasks]
    sd = {k: BertModel.from_pretrained(p).state_dict() for k, p in [("base", base), *experts.items()]}

    def pred(state, t):
        model.load_encoder_state(state)
        return predict(model.heads[tasks[t].name], data[t], progress=False)

    xi = disentanglement_grid(sd["base"], (sd["pair"], sd["triple"]), [0.0, 2.0], pred)
    want = disagreement(pred(sd["base"], 1), pred(
        {k: sd["base"][k] + 2.0 * (sd["pair"][k] - sd["base"][k]) for k in sd["base"]}, 1))
    assert xi[0][0] == 0.0
    assert xi[1][0] == pytest.approx(want)
    assert want > 0  # the toy task vector does change predictions, so the check is not vacuous


def test_compare_config_reports_all_problems_at_once(tmp_path, task_file, base, experts):
    path = _config(tmp_path, task_file, base, {"pair": experts["pair"], "triple": tmp_path / "missing"},
                   methods=[{"name": "x", "method": "tie"}], select_split="dev")
    with pytest.raises(ConfigError) as exc:
        load_compare_config(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "select_split 'dev'" in msg and "experts.triple: model " in msg and "does not exist" in msg
    assert "did you mean 'ties'" in msg


def test_compare_config_unknown_key_and_override(tmp_path, task_file, base, experts):
    path = _config(tmp_path, task_file, base, experts, methodz=[])
    with pytest.raises(ConfigError, match="unknown key 'methodz'; did you mean 'methods'\\?"):
        load_compare_config(path)
    ok = _config(tmp_path, task_file, base, experts)
    cfg = load_compare_config(ok, ["max_examples.validation=5", "batch_size=3"])
    assert cfg.max_examples == {"validation": 5} and cfg.batch_size == 3
