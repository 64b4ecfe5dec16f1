"""Launch recipes: an experiment rendered as a TPU VM script, a Kubernetes JobSet or a SLURM batch
script that starts one `meshtrain train` process per host (`meshtrain launch`)."""
