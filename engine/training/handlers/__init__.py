"""Trainer listeners, one job each; every handler attaches the same way: handler.attach(events)."""
from engine.training.handlers.checkpoint import Checkpointer
from engine.training.handlers.preview import PreviewRenderer
from engine.training.handlers.replan import EpochReplanner
from engine.training.handlers.store_logger import StoreLogger

__all__ = ["Checkpointer", "EpochReplanner", "PreviewRenderer", "StoreLogger"]
