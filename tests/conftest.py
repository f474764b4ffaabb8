"""Test-suite wide settings.

The tests use small tensors, where torch's intra-op thread pool only adds overhead; on a loaded
machine (CI runners, shared cores) its spinning threads make each tiny op tens of times slower.
"""

import torch

torch.set_num_threads(1)
