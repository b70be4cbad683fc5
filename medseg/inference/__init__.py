"""Prediction over whole volumes: sliding window (`sliding_window.py`), predictor (`predictor.py`)."""
