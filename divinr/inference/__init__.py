"""divinr.inference"""
