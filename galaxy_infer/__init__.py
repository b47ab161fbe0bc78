"""galaxy-infer: Galaxy Zoo morphology catalogs from galaxy cutouts, with ONNX models on Ray."""

__version__ = "0.1.0"
