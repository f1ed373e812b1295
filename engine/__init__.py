"""Lightbox engine: data ingest, models, training, run store, jobs. Never imports Streamlit."""

__version__ = "0.1.0"
