"""What every runner shares (fine-tuning, federated, continual, evaluation, the merge engine):
`device` (device and dtype names), `seeding`, `batching` (rows to padded batches),
`evaluation` (the one evaluation loop), `local_training` (the one local-SGD loop),
`aggregation`, `resume`, `files` (durable atomic outputs), `names` (HF file names),
`yaml_config` / `bounded_yaml` (configs), `logs` (third-party chatter silenced).
Nothing here imports a runner."""
