"""The layout of the tuples the fused kernels return.

Kept apart from ``kernels`` so metrics can name these without importing numba.
"""

# Indices into the tuple ``kernels.masked_sums`` returns.
N, S_GRAY, Q_GRAY, S_LAP, Q_LAP, S_B, S_G, S_R, D_RG, D_RB, D_GB, RED, GREEN, BLUE = range(14)
MASKED_SUMS = BLUE + 1  # length of that tuple
# Indices into the tuple ``kernels.hue_sums`` returns.
IMAGE_RED, IMAGE_GREEN, IMAGE_BLUE, IMAGE_SAT = range(4)
