"""zoo: U-Net decoders on a frozen ImageNet MobileNetV2 encoder.

`zoo` imports nothing from `ablations` or `app`; they import it.
"""

from zoo.config import TUTORIAL_FILTERS, DecoderConfig

__all__ = ["DecoderConfig", "TUTORIAL_FILTERS"]
