"""The decoder as pure Flax NNX modules. It knows logical axis names, never a mesh or a device."""
