"""Export: a run's adapter (PEFT), optionally merged into a full model and written as GGUF
for llama.cpp / Ollama, with a model card."""
from pathlib import Path

import streamlit as st

from engine.export import (EXPORTABLE_STAGES, ExportConfig, UnsafePathError,
                           default_export_name, exports_root, resolve_export_dir, zip_folder)
from engine.gguf_export import QUANTS, GGUFExportError, estimate, gguf_arch, human_bytes
from ui.common import (get_jobs, get_store, live_job_panel, run_label, stage_label,
                       translated_choice)
from ui.i18n import t

store, jobs = get_store(), get_jobs()


@st.cache_data(show_spinner=False)
def gguf_estimates(spec: str) -> dict:
    """{quant: estimate} for the base model `spec`, or {"error": why GGUF is not offered}."""
    from engine.inference.models import load_config

    try:
        config = load_config(spec)
        gguf_arch(config)
        return {q: estimate(config, q) for q in QUANTS}
    except GGUFExportError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a base that cannot be read: say so, no GGUF
        return {"error": f"{type(exc).__name__}: {exc}"}


st.title(":material/inventory_2: " + t("export.title"))
stage_names = [stage_label(s) for s in EXPORTABLE_STAGES]  # every stage listed below
st.caption(t("export.intro", stages=t("export.stages_list", first=", ".join(stage_names[:-1]),
                                      last=stage_names[-1])))

runs = {}
for stage in EXPORTABLE_STAGES:
    for run in store.list_runs(stage=stage, status="succeeded"):
        runs[run["id"]] = run
if not runs:
    st.info(t("export.no_runs"))
else:
    ordered = sorted(runs, reverse=True)
    run_id = translated_choice(st.selectbox, t("export.run"), ordered, "export_run",
                               lambda i: f"{stage_label(runs[i]['stage'])} · {run_label(runs[i])}")
    run = runs[run_id]
    out_dir = st.text_input(t("export.out_dir"), key="export_out",
                            placeholder=default_export_name(run),
                            help=t("export.out_dir_help", root=str(exports_root())))
    merged = st.checkbox(t("export.merged"), key="export_merged", help=t("export.merged_help"))
    spec = (run.get("config") or {}).get("model") or "embedded"
    sizes = gguf_estimates(spec) if run["stage"] != "reward" else \
        {"error": t("export.gguf_reward")}
    if "error" in sizes:
        gguf = []
        st.caption(t("export.gguf_unavailable", reason=sizes["error"]))
    else:
        gguf = translated_choice(
            st.multiselect, t("export.gguf"), list(QUANTS), "export_gguf",
            lambda q: t("export.gguf_option", type=q.upper(),
                        size=human_bytes(sizes[q]["file_bytes"]),
                        memory=human_bytes(sizes[q]["memory_bytes"])),
            help=t("export.gguf_help", context=sizes["f16"]["context"]))
    target = None
    try:
        target = resolve_export_dir(out_dir, default_name=default_export_name(run))
        st.caption(t("export.target", path=str(target)))
    except UnsafePathError as exc:
        st.error(t("export.unsafe", error=str(exc)), icon=":material/block:")
    if st.button(t("export.start"), type="primary", icon=":material/download:",
                 key="export_start", disabled=target is None):
        cfg = ExportConfig(model=(run.get("config") or {}).get("model") or "embedded",
                           run_id=run_id, out_dir=out_dir.strip(), merged=merged,
                           gguf=list(gguf))
        st.session_state["export_job"] = jobs.submit("export", cfg, parents=[run_id],
                                                      name=f"export-{run['name']}")

job_id = st.session_state.get("export_job")
if job_id:  # when it ends, the new export is listed below
    live_job_panel(job_id, "export_seen", show_log=False)
    # ... and shown, once (the viewer kept showing the previous one)
    if st.session_state.get("export_shown") != job_id \
            and store.get_run(job_id)["status"] == "succeeded":
        st.session_state["export_shown"] = st.session_state["export_pick"] = job_id

# -- finished exports ---------------------------------------------------------------------------
st.subheader(t("export.done_title"))
exports = [r for r in store.list_runs(stage="export", status="succeeded")
           if (r.get("summary") or {}).get("out_dir")]
if not exports:
    st.caption(t("export.no_exports"))
else:
    labels = {r["id"]: t("export.export_label", id=r["id"], run=r["summary"].get("run_name"),
                         path=r["summary"]["out_dir"]) for r in exports}
    pick = translated_choice(st.selectbox, t("export.pick"), list(labels), "export_pick",
                             labels.get)
    summary = next(r for r in exports if r["id"] == pick)["summary"]
    adapter = Path(summary["adapter_dir"])
    if not adapter.exists():
        st.warning(t("export.missing", path=str(adapter)))
    else:
        st.markdown(t("export.base", base=summary.get("base_model")))
        c1, c2 = st.columns(2)
        with c1:
            st.markdown(f"**{t('export.adapter')}** · `{adapter}`")
            st.code("\n".join(summary.get("adapter_files") or []) or "—", language=None)
            st.download_button(t("export.download_adapter"), data=lambda p=adapter: zip_folder(p),
                               file_name=f"{adapter.parent.name}-adapter.zip",
                               mime="application/zip", icon=":material/folder_zip:",
                               key=f"dl-adapter-{pick}")
        merged_dir = summary.get("merged_dir")
        with c2:
            if merged_dir and Path(merged_dir).exists():
                st.markdown(f"**{t('export.merged_model')}** · `{merged_dir}`")
                st.code("\n".join(summary.get("merged_files") or []) or "—", language=None)
                st.download_button(t("export.download_merged"),
                                   data=lambda p=Path(merged_dir): zip_folder(p),
                                   file_name=f"{Path(merged_dir).parent.name}-merged.zip",
                                   mime="application/zip", icon=":material/folder_zip:",
                                   key=f"dl-merged-{pick}")
            else:
                st.caption(t("export.no_merged"))
        gguf_files = [f for f in summary.get("gguf_files") or [] if Path(f["path"]).exists()]
        if gguf_files:
            gguf_dir = Path(summary["gguf_dir"])
            st.markdown(f"**{t('export.gguf_title')}** · `{gguf_dir}`")
            cols = st.columns(len(gguf_files))
            for col, f in zip(cols, gguf_files):
                with col:
                    st.metric(f["quant"].upper(), human_bytes(f["bytes"]),
                              help=t("export.gguf_memory", memory=human_bytes(f["memory_bytes"]),
                                     context=f["context"]))
                    st.download_button(t("export.download_gguf", type=f["quant"].upper()),
                                       data=lambda p=Path(f["path"]): p.read_bytes(),
                                       file_name=f["file"], mime="application/octet-stream",
                                       icon=":material/download:",
                                       key=f"dl-gguf-{pick}-{f['quant']}")
            howto = gguf_dir / "README.md"
            if howto.exists():
                with st.expander(t("export.gguf_howto"), icon=":material/terminal:"):
                    st.markdown(howto.read_text(encoding="utf-8"))
                    modelfile = gguf_dir / "Modelfile"
                    if modelfile.exists():
                        st.code(modelfile.read_text(encoding="utf-8"), language=None)
        charts = summary.get("charts") or []
        if charts:
            with st.expander(t("export.charts", n=len(charts)), icon=":material/show_chart:"):
                cols = st.columns(2)
                for i, name in enumerate(charts):
                    path = adapter / "charts" / name
                    if path.exists():
                        cols[i % 2].image(str(path))
        card = adapter / "README.md"
        if card.exists():
            with st.expander(t("export.card"), icon=":material/description:"):
                body = card.read_text(encoding="utf-8").split("---", 2)[-1]
                # the charts are shown above; their relative links do not resolve here
                st.markdown("\n".join(line for line in body.splitlines()
                                       if not line.startswith("![")))
