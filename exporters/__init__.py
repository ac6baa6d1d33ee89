"""ONNX export of students, validation against PyTorch, onnxruntime sessions."""
