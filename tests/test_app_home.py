from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def test_home_page_shows_pipeline_and_model(store):
    store.create_dataset("demo", "sft")
    store.add_rows("demo", [{"prompt": "p", "response": "r"}] * 3)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "SmolLM2-135M-Instruct" in text
    captions = " ".join(c.value for c in at.caption)
    assert "datasets: 1 · rows: 3" in captions
    assert at.title[0].value.endswith("RLHF Lab")


def test_home_page_in_french(store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception
    assert any("Alignez" in m.value for m in at.markdown)
