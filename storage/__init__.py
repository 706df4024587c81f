"""SQLite storage for RLHF Lab: the only package that writes SQL."""
from storage.db import Store, DatasetExists, NotFound, data_home, default_db_path

__all__ = ["Store", "DatasetExists", "NotFound", "data_home", "default_db_path"]
