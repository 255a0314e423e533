"""Speed: precision per device and component, memory layout, attention, opt-in compile, guarded VAE
decode and reuse of prompt encodings between requests.

Nothing here runs at import time; every probe is a function the caller decides to run.
"""
