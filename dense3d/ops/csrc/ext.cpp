// dense3d._C: the one extension module. Each op lives in csrc/<op>/{<op>.h, <op>_cpu.cpp,
// <op>_cuda.cu}; its header declares the dispatching entry points registered here.
#include <torch/extension.h>

#include "bev_pool/bev_pool.h"
#include "sparse_conv/sparse_conv.h"

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("with_cuda", &with_cuda, "True when dense3d._C was built with its CUDA kernels");
  m.def("bev_pool_forward", &bev_pool_forward, "BEV pooling: sum point features per cell (sorted intervals)");
  m.def("bev_pool_backward", &bev_pool_backward, "BEV pooling backward: gather the cell gradients");
  m.def("sparse_conv_kernel_map", &dense3d::sparse_conv_kernel_map, "sparse conv kernel map (rulebook)");
  m.def("sparse_conv_forward", &dense3d::sparse_conv_forward, "sparse conv gather-GEMM-scatter forward");
  m.def("sparse_conv_backward", &dense3d::sparse_conv_backward, "sparse conv backward (features, weight)");
}
