"""fastkv.http"""
