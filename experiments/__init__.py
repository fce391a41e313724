"""Research questions still worth keeping, one folder each with its README; nothing product imports them."""
