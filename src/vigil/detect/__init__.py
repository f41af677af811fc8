"""vigil.detect"""
