"""vigil.sinks"""
