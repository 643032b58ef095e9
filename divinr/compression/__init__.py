"""divinr.compression"""
