"""The demo model (``digits.tflite``), shipped as package data; see README.md."""
