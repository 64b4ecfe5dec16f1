"""The shipped configs (base.yaml, model/ presets, experiment/ files, gin/ twins, hardware.yaml), as
package data of `meshtrain.configs`: code finds them through importlib.resources, never the source tree."""
