"""divinr.metrics"""
