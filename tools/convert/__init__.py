"""Checkpoint conversion between meshtrain, Hugging Face and other meshes/dtypes; see
tools/convert_checkpoint.py. `safetensors_io` reads and writes the safetensors format one tensor
at a time (numpy and ml_dtypes only), so a conversion holds about one tensor in host memory."""
