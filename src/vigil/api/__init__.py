"""vigil.api"""
