"""RLHF Lab's engine: models, data, training stages and jobs. No Streamlit here."""
