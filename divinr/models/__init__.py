"""divinr.models"""
