"""divinr: extreme low-bitrate video compression with INR-conditioned video diffusion (DiV-INR)."""

__version__ = "0.1.0"
