"""satura.engine.verify"""
