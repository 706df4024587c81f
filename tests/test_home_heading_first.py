"""The first page a newcomer waits for: on a fresh data folder the Home page's heading is
drawn before the database is created (schema and sample datasets) and before the sidebar's
device and database lines; every other page still finds the job manager started (runs
orphaned by a crash marked interrupted) before it runs."""
import streamlit as st
from streamlit.testing.v1 import AppTest

from storage import Store
from tests.conftest import ROOT


def app_events(monkeypatch, page: str | None = None, probe=None) -> tuple[AppTest, list[str]]:
    """The app on `page` (Home by default) with the order in which it drew the page's
    heading, a caption, and created the database (and what `probe()` said at the heading)."""
    events: list[str] = []
    title, caption, init = st.title, st.caption, Store.__init__

    def recorded(name, fn):
        def call(*args, **kwargs):
            events.append(name)
            if name == "title" and probe:
                events.append(probe())
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(st, "title", recorded("title", title))
    monkeypatch.setattr(st, "caption", recorded("caption", caption))
    monkeypatch.setattr(Store, "__init__", recorded("store", init))
    st.cache_resource.clear()  # a fresh server: no store opened yet
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if page:
        at.switch_page(page)
    return at.run(), events


def test_home_heading_comes_before_the_database_and_the_sidebar_footer(monkeypatch):
    at, events = app_events(monkeypatch)
    st.cache_resource.clear()
    assert not at.exception
    assert at.title[0].value.endswith("RLHF Lab")
    assert events.index("title") < events.index("store")
    # the footer still closes the sidebar: language, model, then device and database
    sidebar = [c.value for c in at.sidebar.caption]
    assert any(line.startswith("Database") for line in sidebar[-1:]), sidebar
    assert "Jobs" in [s.value for s in at.subheader]  # the whole page was drawn


def test_other_pages_find_an_orphaned_run_interrupted_before_they_run(monkeypatch, lab_home):
    store = Store()
    lost = store.create_run("sft", {"max_steps": 3})
    store.update_run(lost, status="running", pid=2**22 + 12345, host="elsewhere")
    store.close()
    at, events = app_events(monkeypatch, "views/runs.py",
                            probe=lambda: "lost run " + Store().get_run(lost)["status"])
    st.cache_resource.clear()
    assert not at.exception
    # when the Runs page draws its heading (then its table), the run is already interrupted
    assert next(e for e in events if e.startswith("lost run")) == "lost run interrupted"
