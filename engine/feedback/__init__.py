"""AI feedback: judges, constitutions, templates, critique-revise and AI preference labels."""
