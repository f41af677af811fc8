"""vigil.stream"""
