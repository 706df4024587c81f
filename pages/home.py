"""Home: the pipeline as steps, each with its state; the model, the device, running jobs."""
import streamlit as st

from engine import data as D
from engine.inference.models import device_summary, display_name
from storage.db import ACTIVE_STATES
from ui.common import get_jobs, get_store, model_spec, run_label
from ui.i18n import t

store = get_store()
st.title(":material/science: " + t("home.title"))
st.write(t("home.intro"))

datasets = D.list_datasets(store)
steps = [
    ("data", ":material/edit_note:", len(datasets), t("home.data_state", n=len(datasets),
                                    rows=sum(d["rows"] for d in datasets))),
]
for stage, icon in (("sft", ":material/school:"), ("reward", ":material/balance:"), ("ppo", ":material/target:")):
    runs = store.list_runs(stage=stage)
    done = [r for r in runs if r["status"] == "succeeded"]
    steps.append((stage, icon, len(done), t("home.runs_state", n=len(runs), done=len(done))))
compares = store.list_comparisons()
steps.append(("compare", ":material/compare:", len(compares), t("home.compare_state", n=len(compares),
                                                 votes=len(store.list_votes()))))
exports = store.list_runs(stage="export", status="succeeded")
steps.append(("export", ":material/inventory_2:", len(exports), t("home.export_state", n=len(exports))))

cols = st.columns(len(steps))
for col, (key, icon, count, text) in zip(cols, steps):
    with col.container(border=True):
        st.markdown(f"### {icon}")
        st.markdown(f"**{t('nav.' + key)}**")
        st.caption((":material/check_circle: " if count else ":material/radio_button_unchecked: ") + text)
        st.page_link(f"pages/{key}.py", label=t("home.open"))

left, right = st.columns(2)
with left:
    st.subheader(t("home.model"))
    dev = device_summary()
    st.markdown(t("home.model_line", name=display_name(model_spec()), spec=model_spec()))
    st.markdown(t("home.device_line", device=dev["device"], dtype=dev["dtype"],
                  threads=dev["threads"]))
with right:
    st.subheader(t("home.jobs"))
    active = [store.get_run(i) for i in get_jobs().active()]
    active += [r for r in store.list_runs(status=ACTIVE_STATES)
               if r["id"] not in {a["id"] for a in active}]
    if not active:
        st.caption(t("home.no_jobs"))
    for run in active:
        total = run.get("total_steps") or 0
        st.progress((run.get("step") or 0) / total if total else 0.0, text=run_label(run))
    interrupted = store.list_runs(status="interrupted")
    if interrupted:
        st.warning(t("home.interrupted", n=len(interrupted)))
