"""The networks runners train and score: `encoder` (checking and loading HF checkpoints, mean
pooling), `classifier` (the one classifier wrapper: encoder + linear head, HF call convention),
`ridge` (closed-form ridge heads from additive statistics)."""
