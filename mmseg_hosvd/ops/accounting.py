"""Units and byte accounting shared by the ops, hooks and tools."""

#: bytes in one MiB (the paper's "MB" is 2**20 bytes)
MIB = 2**20
