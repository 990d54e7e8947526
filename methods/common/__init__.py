"""Building blocks shared by several methods: bit packing and the packed integer group layer."""
from methods.common.intlayer import GroupIntLinear
from methods.common.packing import pack_rows, packed_length, unpack_rows

__all__ = ["GroupIntLinear", "pack_rows", "packed_length", "unpack_rows"]
