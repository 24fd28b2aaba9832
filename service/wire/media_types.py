"""The media types the wire formats are known by."""

JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"
ARRAY_TYPES = (JSON, SAFETENSORS)
"""What a body or an answer holding arrays may be."""
CSV = "text/csv"
