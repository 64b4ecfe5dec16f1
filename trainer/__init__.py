"""The training side of meshtrain: configs, data, optimizer and state, the loop, checkpoints."""
