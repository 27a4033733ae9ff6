"""ortserve: a FastAPI + ONNX Runtime model server."""

__version__ = "0.1.0"
