"""satura.rules"""
