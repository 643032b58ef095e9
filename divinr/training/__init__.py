"""divinr.training"""
