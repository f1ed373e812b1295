"""Training: the Trainer loop, its events and handlers, losses and augmentations.

Nothing outside training imports this package except the run executor, the search and the pages."""
