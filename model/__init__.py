"""The decoder as pure Flax NNX modules. It knows logical axis names, never a mesh or a device.

config.ModelConfig (the settings) -> decoder.Decoder (the model) -> loss.cross_entropy_loss;
params.count_params counts a config without building it; axes holds the axis names and
logical_axes for the sharding package. Nothing is re-exported here so that importing
model.config stays free of JAX.
"""
