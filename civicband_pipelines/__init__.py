"""Keeps a local database of civic.band meeting pages in exact sync, orchestrated by Dagster."""
