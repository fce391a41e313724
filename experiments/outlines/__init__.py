"""Raw against regular outlines, and the smallest building worth keeping, on the held-out cities."""
