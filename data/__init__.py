"""Dataset definitions (the TFDS builder package ``data.navsim_tfds``); built data lands here too."""
