"""Words and numbers a newcomer reads (issue 25, item 15): counts in the right plural, no
English left in French text, the import name filled from a path, and metric deltas that do
not overstate (SFT at step 0, DPO against chance rather than against its tied start)."""
import json

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def page(path: str, lang: str = "en") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["lang"] = lang
    at.run()
    return at.switch_page(path).run()


def voted(store, choice: str = "a", dataset: str = "human-preferences") -> None:
    run = store.create_run("pair_sample", {}, name="pair")
    store.update_run(run, status="succeeded", summary={"vote": choice, "dataset": dataset})


def test_collect_counts_say_one_pair_not_one_pairs(store):
    voted(store)
    at = page("views/data.py")
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert "human-preferences: 1 pair voted here, 0 ties, 0 both bad." in captions, captions
    voted(store, "tie")
    voted(store, "b")
    at = page("views/data.py", "fr")
    captions = [c.value for c in at.caption]
    assert ("human-preferences : 2 paires votées ici, 1 égalité, "
            "0 « toutes deux mauvaises ».") in captions, captions


def test_french_sft_intro_has_no_english_field_name():
    intro = json.loads((ROOT / "i18n/fr/sft.json").read_text(encoding="utf-8"))["intro"]
    assert "(prompt, réponse)" in intro and "response" not in intro


def test_import_by_path_fills_the_dataset_name_until_one_is_typed(store, tmp_path):
    path = tmp_path / "my-pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    at = page("views/data.py")
    at.text_input(key="import_path_0").set_value(str(path)).run()
    assert at.text_input(key="import_name_0").value == "my-pairs"
    at.text_input(key="import_name_0").set_value("mine").run()  # typed: kept
    other = tmp_path / "other.jsonl"
    other.write_text(path.read_text())
    at.text_input(key="import_path_0").set_value(str(other)).run()
    assert at.text_input(key="import_name_0").value == "mine"
    at.text_input(key="import_name_0").set_value("").run()  # cleared: follows the file again
    assert at.text_input(key="import_name_0").value == "other"
    at.button(key="import_go").click().run()
    assert not at.exception
    assert store.get_dataset("other")["rows"] == 1


def finished(store, stage: str, metrics: dict[int, dict]) -> int:
    run = store.create_run(stage, {}, name=f"{stage}-done")
    store.update_run(run, status="succeeded", step=max(metrics), total_steps=max(metrics) or 3)
    for step, values in metrics.items():
        store.log_metrics(run, step, values)
    return run


def metric(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


def test_sft_eval_loss_has_no_change_before_training_has_evaluated(store):
    finished(store, "sft", {0: {"eval_loss": 2.5}})
    at = page("views/sft.py")
    assert not at.exception
    m = metric(at, "Eval loss")
    assert m.value == "2.500" and not m.delta  # no "+0.000" in red at step 0
    finished(store, "sft", {0: {"eval_loss": 2.5}, 3: {"eval_loss": 2.25, "train_loss": 2.0}})
    m = metric(page("views/sft.py"), "Eval loss")
    assert m.value == "2.250" and m.delta == "-0.250"


def test_dpo_accuracy_is_compared_with_chance_not_with_its_tied_start(store):
    finished(store, "dpo", {0: {"eval_reward_accuracy": 0.0},
                            5: {"eval_reward_accuracy": 0.43, "loss": 0.69}})
    at = page("views/dpo.py")
    assert not at.exception
    m = metric(at, "Held-out accuracy")
    assert m.value == "43%" and m.delta == "-7 pts vs chance (50%)"
    m = metric(page("views/dpo.py", "fr"), "Exactitude (réservées)")
    assert m.delta == "-7 pts par rapport au hasard (50 %)"
