"""Shared test settings.

Tiny tensors dominate the suite; torch's default intra-op threading makes them much slower on a
loaded 2-core machine, so tests run single-threaded (this does not change any result).
"""

import torch

torch.set_num_threads(1)
