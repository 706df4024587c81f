"""The first page load after a start pays only for what the Home page draws: its script run
(app.py, the sidebar, views/home.py) imports neither torch nor transformers (seconds; the
device line says "detecting…" until a background thread has imported them) nor pandas,
pyarrow or numpy (about a second; the first chart loads them)."""
import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "pandas", "pyarrow", "numpy")

# a fresh process, as after `streamlit run`: the Home page through AppTest, with the
# background torch import of app.py's last line (engine.inference.specs.warm_up) left out,
# so that sys.modules shows what the script run itself imported
PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from storage import Store

store = Store()
if sys.argv[2] == "seeded":  # a data folder in use: a dataset, finished and orphaned runs
    store.create_dataset("demo", "sft")
    store.add_rows("demo", [{"prompt": "p", "response": "r"}] * 3)
    done = store.create_run("sft", {"max_steps": 3})
    store.update_run(done, status="succeeded", step=3, total_steps=3, finished=time.time())
    lost = store.create_run("ppo", {"max_steps": 3})
    store.update_run(lost, status="running", pid=2**22 + 12345, host="elsewhere")
    store.create_comparison("c", {})
store.close()

import engine.inference.specs as specs
specs.warm_up = lambda: None
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1] + "/app.py", default_timeout=60).run()
print(json.dumps({"exceptions": [str(e.value) for e in at.exception],
                  "title": [t.value for t in at.title],
                  "subheaders": [s.value for s in at.subheader],
                  "warnings": [w.value for w in at.warning],
                  "loaded": [m for m in sys.argv[3:] if m in sys.modules]}))
"""


def home_script_run(state: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), state, *HEAVY],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_home_page_script_run_imports_no_torch_transformers_or_pandas():
    result = home_script_run("fresh")
    assert result["exceptions"] == []
    assert result["title"][0].endswith("RLHF Lab")  # the whole Home page was drawn
    assert "Jobs" in result["subheaders"]
    assert result["loaded"] == []


def test_home_page_of_a_used_data_folder_imports_none_of_them_either():
    result = home_script_run("seeded")
    assert result["exceptions"] == []
    assert any("interrupted" in w for w in result["warnings"])  # the orphan was seen
    assert result["loaded"] == []
