"""The conversion toolchain: calibration data, FP16, INT8 with an accuracy guard, pruning, validation,
TensorRT engine builds. Used by `edgemm convert` and `edgemm eval`; the edge runtime never imports it.
"""
