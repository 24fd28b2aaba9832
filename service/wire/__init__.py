"""Bytes to documents holding numpy arrays and back: JSON and safetensors. No HTTP, no storage."""
