"""clipq.export: torch -> ONNX, graph optimisation, fp16 / int8, TensorRT engines, parity checks."""
