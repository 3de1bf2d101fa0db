# Stub for cybn._kernels_avx512: the kernels of cybn._kernels, compiled with AVX-512 (same
# signatures; x86-64 builds only). See cybn/_kernels.pyi.

from cybn._kernels import backward_inference as backward_inference
from cybn._kernels import backward_input as backward_input
from cybn._kernels import backward_reduce as backward_reduce
from cybn._kernels import backward_training as backward_training
from cybn._kernels import batch_stats as batch_stats
from cybn._kernels import forward_inference as forward_inference
from cybn._kernels import forward_training as forward_training
from cybn._kernels import normalize as normalize
from cybn._kernels import plan_info as plan_info
from cybn._kernels import update_running_stats as update_running_stats
