"""Azure Blob Storage limits that shape the frame format and the settings (named once, here)."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# The classic Append Block limit: the most bytes one append carries (and so the largest frame).
APPEND_BLOCK_LIMIT = 4 * MiB
# Committed blocks one append blob holds; past it Azure answers 409 BlockCountExceedsLimit.
BLOCKS_PER_BLOB_LIMIT = 50_000
# Room a frame needs beyond its entries: header, GCM tag, gzip's worst-case expansion.
FRAME_OVERHEAD_BYTES = 4 * KiB
