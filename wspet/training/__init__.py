"""Training runs: ``train(cfg)`` (:mod:`wspet.training.experiment`), its stages, and what makes them resumable."""
