"""Store, ingest, planning and Ray execution of units of work."""
