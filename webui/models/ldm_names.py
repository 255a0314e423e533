"""Name tables shared by everything that maps diffusers module names to the original LDM/SGM ones."""

from __future__ import annotations

# diffusers ResnetBlock2D child -> original ResBlock child (UNet input/middle/output blocks).
RESNET_LDM_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
