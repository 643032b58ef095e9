"""divinr.data"""
