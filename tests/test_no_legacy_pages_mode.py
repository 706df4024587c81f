"""A fresh server runs app.py once for its first visitor: the pages live in `views/`, not in
a `pages/` folder beside app.py, which would make Streamlit start in its old multipage mode
(its own file list as navigation, then one more run of app.py once st.navigation turns the
mode off). tests/test_browser_home.py checks that a first direct visit to /data still gets
the app's navigation and sidebar."""
from streamlit.runtime.pages_manager import PagesManager

from tests.conftest import ROOT


def test_streamlit_does_not_start_app_py_in_its_old_pages_folder_mode():
    saved = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = None  # as in a server that has not run a script yet
    try:
        PagesManager(str(ROOT / "app.py"), setup_watcher=False)
        assert PagesManager.uses_pages_directory is False
    finally:
        PagesManager.uses_pages_directory = saved

