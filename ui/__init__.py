"""Shared helpers for the Streamlit pages: i18n, storage and job handles, charts."""
