"""mergekit-het: learning from heterogeneous sources with pretrained transformers.

One streaming merge engine (``mergekit_het.merge.engine``) combines experts in parameter
space; federated and continual learning run the same engine round after round.
"""

__version__ = "0.1.0"
