"""satura.extract"""
