"""Shared pytest set-up. Nothing may reach a model hub from the tests."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
