"""Export of the stylizer: StableHLO, ONNX."""
