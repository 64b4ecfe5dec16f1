"""Checkpoint conversion between meshtrain, Hugging Face and other meshes/dtypes (`meshtrain convert`,
tools/convert.py): run.py drives one conversion; families.py maps Llama and GPT-NeoX tensors;
from_hf.py, to_hf.py and reshard.py are the three directions; verify.py compares logits.
safetensors_reader.py and safetensors_writer.py stream the format one tensor at a time (numpy and
ml_dtypes only), so a conversion holds about one tensor in host memory."""
