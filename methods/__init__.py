"""Built-in quantization methods, one folder each (config, algorithm, layer, quantizer)."""
