"""Sparse execution kernels, each used only where measured faster than the dense GEMM on the device."""

from prunekit.kernels.block_sparse import (
    BlockSparseLinear,
    block_density,
    block_sparse_linear,
    pack_block_sparse,
    unpack_block_sparse,
)

__all__ = [
    "BlockSparseLinear",
    "block_density",
    "block_sparse_linear",
    "pack_block_sparse",
    "unpack_block_sparse",
]
