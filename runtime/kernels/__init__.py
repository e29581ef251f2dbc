"""Block-sparse attention kernels (torch CUDA extension) and their dense reference."""
