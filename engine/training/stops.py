"""Why a training run ended early; each is caught by the run executor and becomes the run's status."""


class TrainingStopped(Exception):
    """The run cannot go on (NaN loss, out of memory); the message says why and what to change."""


class RunCancelled(Exception):
    """Raised at a step boundary when the user asked the run to stop."""


class RunPruned(Exception):
    """Raised after an epoch when a hyperparameter search decides this trial is not worth finishing."""
