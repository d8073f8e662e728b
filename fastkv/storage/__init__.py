"""fastkv.storage"""
