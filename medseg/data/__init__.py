"""Datasets: manifests (MSD / nnU-Net folders, CSV and JSON manifests), splits, patch sampling."""
