import pytest
import yaml

from attnkd.errors import UserError
from attnkd.params import Params, load_params
from conftest import REPO


def test_repo_params_file_is_valid_and_states_every_default():
    params = load_params(REPO / "params.yaml")
    assert params == Params()  # the code's defaults and params.yaml never drift apart


def write(tmp_path, doc) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"distill": {"temperture": 2.0}}, "distill.temperture: unknown key"),
        ({"distill": {"epochs": "3"}}, "distill.epochs: Input should be a valid integer"),
        ({"distill": {"temperature": 0.0}}, "distill.temperature: Input should be greater than 0"),
        ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "data: val_fraction + test_fraction"),
        ({"distill": {"layer_map": [[1, 2, 3]]}}, "distill.layer_map: [[1, 2, 3]] is not"),
        ({"students": {"small": {"hidden_size": 100}}}, "students.small: hidden_size 100 is not divisible"),
        ({"methods": {"nothing": {"ce": 0.0}}}, "methods.nothing: a method needs at least one positive"),
        ({"methods": {"ce": {"cross_entropy": 1.0}}}, "methods.ce.cross_entropy: unknown key"),
        ({"evaluate": {"models": ["teacher"]}}, "evaluate.models: unknown key"),
        ({"sede": 1}, "sede: unknown key"),
        ("a: [1", "not valid YAML"),
    ],
)
def test_bad_params_name_the_key(tmp_path, doc, message):
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, doc))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_methods_give_only_positive_weights():
    p = Params.model_validate({"methods": {"x": {"ce": 0.5, "attn_kl": 1.0}}})
    assert p.methods["x"].weights() == {"ce": 0.5, "attn_kl": 1.0}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_profile_gives_valid_params_a_task_accepts_and_a_plan(name):
    """A profile must start: its params validate, its task's own checks pass (SQuAD windows that
    advance) and every student can train every method with the packaged teacher (the plan)."""
    import json

    from profiles import profile_params

    from attnkd.models import resolve_init
    from attnkd.params import PACKAGED_MODEL
    from attnkd.tasks import get_task
    from attnkd.tasks.squad import check_windows

    params = profile_params(name)
    if params.task == "squad":
        check_windows(params.data)
    teacher = json.loads((resolve_init(PACKAGED_MODEL) / "config.json").read_text())
    if params.task == "translation":  # the encoder-decoder the teacher stage builds from teacher.seq2seq
        ts = params.teacher.seq2seq
        teacher = {"encoder_layers": ts.encoder_layers, "decoder_layers": ts.decoder_layers, "decoder_attention_heads": ts.heads, "d_model": ts.d_model}
    get_task(params.task).plan_store(params, teacher)  # raises when a student cannot train a method
