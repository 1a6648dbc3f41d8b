"""Inference: the sliding window over whole volumes, ``predict(cfg)`` for new scans, lesion measurements, MIPs."""
