"""data: image/mask folders to checked arrays, for the studies.

`folders` reads and checks, `splits` splits by ground group, `augment` names the augmentations,
`synthetic` writes test scenes. No deep-learning import here, so reports and tests stay cheap.
"""
