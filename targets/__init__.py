"""satura.targets"""
