"""Home: where to start, the pipeline as steps (each with its state), the model, the
device, running jobs."""
import streamlit as st

from engine import data as D
from engine.inference.specs import display_name
from storage.db import ACTIVE_STATES
from ui.common import device_caption, get_jobs, get_store, model_spec, run_label
from ui.i18n import t, tn

st.title(":material/science: " + t("home.title"))
st.write(t("home.intro"))
# after the heading: on a fresh data folder this creates the database (app.py leaves the job
# manager, which marks runs orphaned by a crash as interrupted, to this page)
store = get_store()
get_jobs()

ICONS = {"data": ":material/edit_note:", "sft": ":material/school:", "reward": ":material/balance:",
         "ppo": ":material/target:", "dpo": ":material/compare_arrows:", "grpo": ":material/groups:",
         "compare": ":material/compare:", "experiments": ":material/science:",
         "export": ":material/inventory_2:"}
datasets = D.list_datasets(store)
steps = {"data": (len(datasets), t("home.data_state", n=len(datasets),
                                   rows=sum(d["rows"] for d in datasets)))}
for stage in ("sft", "reward", "ppo", "dpo", "grpo"):
    runs = store.list_runs(stage=stage)
    done = [r for r in runs if r["status"] == "succeeded"]
    steps[stage] = (len(done), t("home.runs_state", n=len(runs), done=len(done)))
compares = store.list_comparisons()
steps["compare"] = (len(compares), t("home.compare_state", n=len(compares),
                                      votes=len(store.list_votes())))
groups = store.list_groups()
steps["experiments"] = (len(groups), t("home.experiments_state", n=len(groups)))
exports = store.list_runs(stage="export", status="succeeded")
steps["export"] = (len(exports), t("home.export_state", n=len(exports)))

# start here: the first step of the classic path (data, SFT, reward, PPO, compare) not done yet
start = next((k for k in ("sft", "reward", "ppo", "compare") if not steps[k][0]), None)
with st.container(border=True):
    st.markdown(f"**{t('home.start_here')}** " + t(f"home.start_{start or 'done'}"))
    st.page_link(f"views/{start or 'experiments'}.py", icon=ICONS[start or "experiments"],
                 label=t("home.start_open", page=t("nav." + (start or "experiments"))))

order = list(steps)
for row in (order[:5], order[5:]):
    for col, key in zip(st.columns(5), row):
        count, text = steps[key]
        with col.container(border=True):
            st.markdown(f"### {ICONS[key]}")
            st.markdown(f"**{t('nav.' + key)}**")
            st.caption(t(f"home.about_{key}"))
            st.caption((":material/check_circle: " if count
                        else ":material/radio_button_unchecked: ") + text)
            st.page_link(f"views/{key}.py", label=t("home.open"))

left, right = st.columns(2)
with left:
    st.subheader(t("home.model"))
    st.markdown(t("home.model_line", name=display_name(model_spec()), spec=model_spec()))
    device_caption(lambda dev: st.markdown(
        t("home.device_line", device=dev["device"], dtype=dev["dtype"],
          threads=tn("home.cpu_threads", dev["threads"]))))
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
