"""ControlNet, T2I-Adapter and IP-Adapter: the built-in "controlnet" extension (files, units, preprocessors, hooks)."""
