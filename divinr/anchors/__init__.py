"""divinr.anchors"""
