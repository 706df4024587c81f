"""Home (issue 25, items 15-17): a "start here" pointer and a card for every stage, a
device line in words that agree with their number, and a first page that does not wait for
torch's import (the sidebar's device line says "detecting…" until it is loaded)."""
import subprocess
import sys
import textwrap

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def home(lang: str = "en") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["lang"] = lang
    return at.run()


def test_home_says_where_to_start_and_has_a_card_per_stage(store):
    at = home()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**Start here:** the sample datasets are loaded; train a first SFT run" in text
    for name in ("DPO", "GRPO / RLOO", "Experiments", "Reward model", "Export"):
        assert f"**{name}**" in text, name
    captions = " ".join(c.value for c in at.caption)
    assert "run groups: 0" in captions and "no reward model" in captions
    # one SFT run done: the pointer moves on to the reward model
    run = store.create_run("sft", {}, name="s")
    store.update_run(run, status="succeeded")
    at = home()
    assert "**Start here:** you have an SFT run; next, fit a reward model" in " ".join(
        m.value for m in at.markdown)


def test_home_in_french_starts_here_and_counts_threads_in_words(store):
    at = home("fr")
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**Commencez ici :**" in text and "**Expériences**" in text
    device = next(m.value for m in at.markdown if m.value.startswith("Matériel"))
    # French: "1 fil CPU", "2 fils CPU" (never "1 fils")
    n = int(device.split(", ")[-1].split()[0])
    assert device.endswith(f"{n} fil CPU" if n < 2 else f"{n} fils CPU"), device
    assert "1 fils" not in device


def test_home_device_line_in_english_agrees_with_the_thread_count(store):
    import torch

    at = home()
    device = next(m.value for m in at.markdown if m.value.startswith("Device"))
    n = torch.get_num_threads()
    assert device.endswith(f"{n} CPU thread" if n == 1 else f"{n} CPU threads"), device
    torch.set_num_threads(1)
    try:
        device = next(m.value for m in home().markdown if m.value.startswith("Device"))
        assert device.endswith(", 1 CPU thread"), device
    finally:
        torch.set_num_threads(n)


# Run in a fresh interpreter (this one has torch loaded): an import hook refuses torch to
# every thread but the warm-up one; the first page must draw without it, then say the device.
FIRST_LOAD = textwrap.dedent("""
    import sys, threading
    from importlib.abc import MetaPathFinder

    class NoTorchOnTheFirstLoad(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and threading.current_thread().name != "torch-warm-up":
                raise ImportError("torch imported by the page run, thread "
                                  + threading.current_thread().name)
            return None

    sys.meta_path.insert(0, NoTorchOnTheFirstLoad())
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(sys.argv[1], default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value for c in at.sidebar.caption]
    assert "Device: detecting…" in captions, captions
    warm = next(t for t in threading.enumerate() if t.name == "torch-warm-up")
    warm.join(120)
    assert not warm.is_alive()
    at = AppTest.from_file(sys.argv[1], default_timeout=60).run()  # the next page load
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Device: cpu") for c in captions), captions
    print("ok")
""")


def test_first_page_load_does_not_import_torch(lab_home):
    out = subprocess.run([sys.executable, "-c", FIRST_LOAD, str(ROOT / "app.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
